package org.elasticsearch.xpack.security;

import org.elasticsearch.action.ActionRequest;
import org.elasticsearch.action.ActionResponse;
import org.elasticsearch.common.settings.Settings;

import java.util.List;

/**
 * The security plugin (x-pack-security) without its SAML transport actions. Their classes take OpenSAML
 * types in their constructors, and OpenSAML is published on Shibboleth's repository, not on Maven Central
 * (build.sh resolves the plugin without it). The actions are bound when the node starts, so they must go;
 * the SAML REST endpoints stay and fail if called. The test node configures no SAML realm.
 * Loaded by observer.tools.EsNode only for a node run with -E xpack.security.enabled=true. Lives in this package
 * because Elasticsearch lets only org.elasticsearch.xpack plugins install the REST interceptor security needs.
 */
public class SecurityWithoutSaml extends Security {
    public SecurityWithoutSaml(Settings settings) {
        super(settings);
    }

    @Override
    public List<ActionHandler<? extends ActionRequest, ? extends ActionResponse>> getActions() {
        return super.getActions().stream()
            .filter(handler -> handler.getTransportAction().getPackageName().endsWith(".saml") == false)
            .toList();
    }
}
