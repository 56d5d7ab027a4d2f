#!/usr/bin/env bash
# Builds a real Elasticsearch 8 node that runs in one JVM (observer.tools.EsNode) into
#   ${OBSERVER_CACHE:-~/.cache/observer}/elasticsearch/$ELASTICSEARCH_VERSION/{jars,classes}
# and prints the command that runs it. Does nothing when that build is already there.
#
# Run (the node prints "READY http://127.0.0.1:PORT" on stdout, logs to stderr, stops on SIGTERM):
#   java -Xms512m -Xmx512m -cp "$DIR/jars/*:$DIR/classes" observer.tools.EsNode --port PORT --home WORKDIR [-E key=value ...]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [[ -z ${ELASTICSEARCH_VERSION:-} && -f $here/../versions.env ]]; then
  # shellcheck source=../versions.env
  . "$here/../versions.env"
fi
version=${ELASTICSEARCH_VERSION:-8.19.21}
dir=${OBSERVER_CACHE:-$HOME/.cache/observer}/elasticsearch/$version
java_home=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
javac=$java_home/bin/javac
[[ -x $javac ]] || javac=javac

# A stamp records what each part was built from, so edits to the pom or sources rebuild that part.
jars_stamp=$(sha256sum <"$here/pom.xml" | cut -c1-16)-$version
classes_stamp=$(cat "$here/pom.xml" $(find "$here/src" -name '*.java' | sort) | sha256sum | cut -c1-16)-$version

if [[ $(cat "$dir/jars.stamp" 2>/dev/null) != "$jars_stamp" ]]; then
  rm -rf "$dir/jars" "$dir/jars.stamp" "$dir/jars.tmp"
  mkdir -p "$dir"
  # Maven's output (it prints colour codes even in batch mode) only matters when it fails
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -Des.version="$version" \
    -DoutputDirectory="$dir/jars.tmp" -DincludeScope=runtime >"$dir/mvn.log" 2>&1 || { cat "$dir/mvn.log" >&2; exit 1; }
  rm "$dir/mvn.log"
  mv "$dir/jars.tmp" "$dir/jars"
  echo "$jars_stamp" >"$dir/jars.stamp"
fi

if [[ $(cat "$dir/classes.stamp" 2>/dev/null) != "$classes_stamp" ]]; then
  rm -rf "$dir/classes" "$dir/classes.stamp" "$dir/classes.tmp"
  find "$here/src/main/java" -name '*.java' >"$dir/sources.txt"
  "$javac" --release 17 -nowarn -XDsuppressNotes -d "$dir/classes.tmp" -cp "$dir/jars/*" @"$dir/sources.txt" >&2
  rm "$dir/sources.txt"
  mv "$dir/classes.tmp" "$dir/classes"
  echo "$classes_stamp" >"$dir/classes.stamp"
fi

echo "ELASTICSEARCH_HOME=$dir"
echo "CLASSPATH=$dir/jars/*:$dir/classes"
echo "RUN=java -Xms512m -Xmx512m -cp '$dir/jars/*:$dir/classes' observer.tools.EsNode --port PORT --home WORKDIR"
