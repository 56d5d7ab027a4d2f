package observer.tools;

import org.apache.lucene.util.SetOnce;
import org.elasticsearch.Build;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.ClusterState;
import org.elasticsearch.cluster.ClusterStateUpdateTask;
import org.elasticsearch.cluster.metadata.DataStream;
import org.elasticsearch.cluster.metadata.IndexNameExpressionResolver;
import org.elasticsearch.cluster.metadata.Metadata;
import org.elasticsearch.cluster.metadata.MetadataDeleteIndexService;
import org.elasticsearch.cluster.metadata.MetadataIndexTemplateService;
import org.elasticsearch.cluster.node.DiscoveryNodes;
import org.elasticsearch.cluster.routing.IndexRoutingTable;
import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.common.Priority;
import org.elasticsearch.common.Strings;
import org.elasticsearch.common.io.stream.NamedWriteableRegistry;
import org.elasticsearch.common.regex.Regex;
import org.elasticsearch.common.settings.ClusterSettings;
import org.elasticsearch.common.settings.IndexScopedSettings;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.common.settings.SettingsFilter;
import org.elasticsearch.core.TimeValue;
import org.elasticsearch.features.NodeFeature;
import org.elasticsearch.index.Index;
import org.elasticsearch.index.IndexNotFoundException;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestChannel;
import org.elasticsearch.rest.RestController;
import org.elasticsearch.rest.RestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.xcontent.XContentBuilder;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.function.Predicate;
import java.util.function.Supplier;

import static org.elasticsearch.rest.RestRequest.Method.DELETE;
import static org.elasticsearch.rest.RestRequest.Method.GET;
import static org.elasticsearch.rest.RestRequest.Method.HEAD;

/**
 * REST endpoints that a distribution gets from modules which are not published as jars
 * (rest-root: GET /, data-streams: GET/DELETE _data_stream). Built on server classes only;
 * the response shapes follow the real endpoints' main fields.
 */
public class RestCompatPlugin extends Plugin implements ActionPlugin {
    private final SetOnce<ClusterService> clusterService = new SetOnce<>();
    private volatile Settings settings = Settings.EMPTY;

    @Override
    public Collection<?> createComponents(PluginServices services) {
        clusterService.set(services.clusterService());
        settings = services.environment().settings();
        return List.of();
    }

    @Override
    public Collection<RestHandler> getRestHandlers(Settings settings, NamedWriteableRegistry registry, RestController controller,
            ClusterSettings clusterSettings, IndexScopedSettings indexScopedSettings, SettingsFilter settingsFilter,
            IndexNameExpressionResolver resolver, Supplier<DiscoveryNodes> nodes, Predicate<NodeFeature> clusterSupportsFeature) {
        return List.of(new MainHandler(), new GetDataStreamHandler(), new DeleteDataStreamHandler());
    }

    /** GET / : what the Python client's info() returns (version.number, tagline, cluster_uuid). */
    class MainHandler extends BaseRestHandler {
        public String getName() { return "observer_main"; }
        public List<Route> routes() { return List.of(new Route(GET, "/"), new Route(HEAD, "/")); }

        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            return channel -> {
                ClusterState state = clusterService.get().state();
                Build build = Build.current();
                XContentBuilder b = channel.newBuilder();
                b.startObject()
                    .field("name", clusterService.get().getNodeName())
                    .field("cluster_name", state.getClusterName().value())
                    .field("cluster_uuid", state.metadata().clusterUUID())
                    .startObject("version")
                    .field("number", build.qualifiedVersion())
                    .field("build_flavor", build.flavor())
                    .field("build_type", "tar")
                    .field("build_hash", build.hash())
                    .field("build_date", build.date())
                    .field("build_snapshot", build.isSnapshot())
                    .field("lucene_version", org.apache.lucene.util.Version.LATEST.toString())
                    .field("minimum_wire_compatibility_version", build.minWireCompatVersion())
                    .field("minimum_index_compatibility_version", build.minIndexCompatVersion())
                    .endObject()
                    .field("tagline", "You Know, for Search")
                    .endObject();
                channel.sendResponse(new RestResponse(RestStatus.OK, b));
            };
        }
    }

    /**
     * Names matching a comma-separated list of names/wildcards; a missing concrete name is a 404 like the real API.
     * Wildcards match hidden data streams only with expand_wildcards=hidden|all. Also consumes the other
     * parameters the real handlers accept, which BaseRestHandler would otherwise reject.
     */
    static Set<String> resolve(Metadata md, RestRequest request) {
        String expr = request.param("name");
        String expand = request.param("expand_wildcards", "open");
        boolean hidden = expand.contains("all") || expand.contains("hidden");
        for (String ignored : List.of("master_timeout", "timeout", "include_defaults", "verbose")) request.param(ignored);
        Set<String> out = new TreeSet<>();
        for (String p : Strings.splitStringByCommaToArray(expr == null || expr.isEmpty() ? "*" : expr)) {
            if (p.equals("_all")) p = "*";
            if (Regex.isSimpleMatchPattern(p)) {
                for (DataStream ds : md.dataStreams().values()) {
                    if (Regex.simpleMatch(p, ds.getName()) && (hidden || ds.isHidden() == false)) out.add(ds.getName());
                }
            } else if (md.dataStreams().containsKey(p)) {
                out.add(p);
            } else {
                throw new IndexNotFoundException(p);
            }
        }
        return out;
    }

    class GetDataStreamHandler extends BaseRestHandler {
        public String getName() { return "observer_get_data_stream"; }
        public List<Route> routes() { return List.of(new Route(GET, "/_data_stream"), new Route(GET, "/_data_stream/{name}")); }

        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            ClusterState state = clusterService.get().state();
            Set<String> names;
            try {
                names = resolve(state.metadata(), request);
            } catch (IndexNotFoundException e) {
                return channel -> channel.sendResponse(new RestResponse(channel, e));
            }
            return channel -> {
                XContentBuilder b = channel.newBuilder();
                b.startObject().startArray("data_streams");
                for (String n : names) {
                    DataStream ds = state.metadata().dataStreams().get(n);
                    b.startObject().field("name", n).startObject("timestamp_field").field("name", "@timestamp").endObject();
                    b.startArray("indices");
                    for (Index i : ds.getIndices()) b.startObject().field("index_name", i.getName()).field("index_uuid", i.getUUID()).endObject();
                    b.endArray();
                    b.field("generation", ds.getGeneration()).field("status", health(state, ds));
                    String template = MetadataIndexTemplateService.findV2Template(state.metadata(), n, false);
                    if (template != null) b.field("template", template);
                    if (ds.getDataLifecycle() != null) b.field("lifecycle", ds.getDataLifecycle());
                    b.field("hidden", ds.isHidden()).field("system", ds.isSystem())
                        .field("allow_custom_routing", ds.isAllowCustomRouting()).field("replicated", ds.isReplicated());
                    if (ds.getIndexMode() != null) b.field("index_mode", ds.getIndexMode().getName());
                    b.endObject();
                }
                b.endArray().endObject();
                channel.sendResponse(new RestResponse(RestStatus.OK, b));
            };
        }

        private String health(ClusterState state, DataStream ds) {
            String h = "GREEN";
            for (Index i : ds.getIndices()) {
                IndexRoutingTable rt = state.routingTable().index(i);
                if (rt == null || rt.allPrimaryShardsActive() == false) return "RED";
                if (rt.allShardsActive() == false) h = "YELLOW";
            }
            return h;
        }
    }

    /** DELETE _data_stream/{name}: drop the data stream and its backing (and failure-store) indices in one cluster state update. */
    class DeleteDataStreamHandler extends BaseRestHandler {
        public String getName() { return "observer_delete_data_stream"; }
        public List<Route> routes() { return List.of(new Route(DELETE, "/_data_stream/{name}")); }

        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            resolve(clusterService.get().state().metadata(), request); // consume parameters, 404 early
            return channel -> clusterService.get().submitUnbatchedStateUpdateTask("delete-data-stream [" + request.param("name") + "]",
                new ClusterStateUpdateTask(Priority.HIGH, TimeValue.timeValueSeconds(30)) {
                    @Override
                    public ClusterState execute(ClusterState current) {
                        Set<String> names = resolve(current.metadata(), request);
                        if (names.isEmpty()) return current;
                        Set<Index> indices = new HashSet<>();
                        Metadata.Builder md = Metadata.builder(current.metadata());
                        for (String n : names) {
                            DataStream ds = current.metadata().dataStreams().get(n);
                            indices.addAll(ds.getIndices());
                            indices.addAll(ds.getFailureIndices());
                            md.removeDataStream(n);
                        }
                        ClusterState without = ClusterState.builder(current).metadata(md).build();
                        return MetadataDeleteIndexService.deleteIndices(without, indices, settings);
                    }

                    @Override
                    public void onFailure(Exception e) {
                        try {
                            channel.sendResponse(new RestResponse(channel, e));
                        } catch (IOException io) {
                            e.addSuppressed(io);
                        }
                    }

                    @Override
                    public void clusterStateProcessed(ClusterState before, ClusterState after) {
                        try {
                            XContentBuilder b = channel.newBuilder();
                            b.startObject().field("acknowledged", true).endObject();
                            channel.sendResponse(new RestResponse(RestStatus.OK, b));
                        } catch (IOException e) {
                            onFailure(e);
                        }
                    }
                });
        }
    }
}
