"""The grammar of the observer.dev/* annotations that steer collection."""

from __future__ import annotations

import pytest

from observer.kube.annotations import CollectionHints, collection_hints, problems, steering


@pytest.mark.parametrize(
    ("annotations", "container", "hints"),
    [
        ({}, "app", CollectionHints()),
        ({"exclude": "true"}, "app", CollectionHints(exclude=True)),
        ({"exclude": "true", "app.exclude": "false"}, "app", CollectionHints()),
        ({"exclude": "true", "app.exclude": "false"}, "sidecar", CollectionHints(exclude=True)),
        ({"multiline": "off"}, "app", CollectionHints(multiline=False)),
        ({"multiline": "true"}, "app", CollectionHints(multiline=True)),
        (
            {"multiline": "false", "app.multiline": "java, go"},
            "app",
            CollectionHints(multiline=True, languages=("java", "go")),
        ),
        ({"parser": "plain", "app.parser": "JSON"}, "app", CollectionHints(parser="json")),
        ({"parser": "plain", "app.parser": "JSON"}, "sidecar", CollectionHints(parser="plain")),
        # A container value that cannot be used falls back to the pod-wide one.
        ({"parser": "plain", "app.parser": "xml"}, "app", CollectionHints(parser="plain")),
        ({"multiline": "cobol"}, "app", CollectionHints()),
    ],
)
def test_hints_for_a_container(
    annotations: dict[str, str], container: str, hints: CollectionHints
) -> None:
    """A container's own setting wins over the pod-wide one; unusable values are left out."""
    assert collection_hints(annotations, container) == hints


def test_only_our_prefix_is_kept() -> None:
    """Annotations under observer.dev/ are kept without the prefix; others are not ours."""
    assert steering({"observer.dev/app.exclude": "true", "prometheus.io/scrape": "true"}) == {
        "app.exclude": "true"
    }


def test_problems_name_each_annotation_ignored() -> None:
    """Unknown settings and unusable values are reported with the full annotation name."""
    assert problems({"app.exclud": "true", "parser": "xml", "exclude": "yes"}) == [
        "observer.dev/app.exclud: unknown setting; known: exclude, multiline, parser",
        "observer.dev/parser: cannot use 'xml'",
    ]
