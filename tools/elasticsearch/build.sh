#!/usr/bin/env bash
# Builds a real Elasticsearch 8 node that runs in one JVM (observer.tools.EsNode) into
#   ${OBSERVER_CACHE:-~/.cache/observer}/elasticsearch/$ELASTICSEARCH_VERSION/{jars,jars-security,classes}
# and prints the command that runs it. Does nothing when that build is already there.
# jars-security holds the security plugin and what it needs beyond jars (the pom's "security"
# profile); only a node run with security puts it on its classpath.
#
# Run (the node prints "READY http://127.0.0.1:PORT" on stdout, logs to stderr, stops on SIGTERM):
#   java -Xms512m -Xmx512m -cp "$DIR/jars/*:$DIR/classes" observer.tools.EsNode --port PORT --home WORKDIR [-E key=value ...]
# With security (-E xpack.security.enabled=true and its settings, see EsNode):
#   java ... -cp "$DIR/jars/*:$DIR/jars-security/*:$DIR/classes" observer.tools.EsNode ...
# Check an ILM policy body with Elasticsearch's own ILM classes (no node can run ILM: its module
# is not published as a jar):
#   java -cp "$DIR/jars/*:$DIR/classes" observer.tools.LifecyclePolicyCheck NAME < body.json
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

copy_dependencies() {  # copy_dependencies DIR [MAVEN ARGS...]
  local out=$1
  shift
  # Maven's output (it prints colour codes even in batch mode) only matters when it fails
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -Des.version="$version" "$@" \
    -DoutputDirectory="$out" -DincludeScope=runtime >"$dir/mvn.log" 2>&1 || { cat "$dir/mvn.log" >&2; exit 1; }
  rm "$dir/mvn.log"
}

if [[ $(cat "$dir/jars.stamp" 2>/dev/null) != "$jars_stamp" ]]; then
  rm -rf "$dir/jars.stamp" "$dir/jars.tmp" "$dir/jars-security.tmp"
  mkdir -p "$dir"
  copy_dependencies "$dir/jars.tmp"
  copy_dependencies "$dir/jars-security.tmp" -P security
  # keep only what security adds: each jar is on a secure node's classpath once
  for jar in "$dir"/jars.tmp/*.jar; do
    rm -f "$dir/jars-security.tmp/$(basename "$jar")"
  done
  # replaced only once resolved: a node already running keeps its jars for as long as possible
  rm -rf "$dir/jars" "$dir/jars-security"
  mv "$dir/jars.tmp" "$dir/jars"
  mv "$dir/jars-security.tmp" "$dir/jars-security"
  echo "$jars_stamp" >"$dir/jars.stamp"
fi

if [[ $(cat "$dir/classes.stamp" 2>/dev/null) != "$classes_stamp" ]]; then
  rm -rf "$dir/classes" "$dir/classes.stamp" "$dir/classes.tmp"
  find "$here/src/main/java" -name '*.java' >"$dir/sources.txt"
  "$javac" --release 17 -nowarn -XDsuppressNotes -d "$dir/classes.tmp" -cp "$dir/jars/*:$dir/jars-security/*" @"$dir/sources.txt" >&2
  rm "$dir/sources.txt"
  mv "$dir/classes.tmp" "$dir/classes"
  echo "$classes_stamp" >"$dir/classes.stamp"
fi

echo "ELASTICSEARCH_HOME=$dir"
echo "CLASSPATH=$dir/jars/*:$dir/classes"
echo "SECURITY_CLASSPATH=$dir/jars/*:$dir/jars-security/*:$dir/classes"
echo "RUN=java -Xms512m -Xmx512m -cp '$dir/jars/*:$dir/classes' observer.tools.EsNode --port PORT --home WORKDIR"
