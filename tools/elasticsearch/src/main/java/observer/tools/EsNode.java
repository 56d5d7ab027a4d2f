package observer.tools;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.ClasspathNode;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.transport.netty4.Netty4Plugin;
import org.elasticsearch.xpack.core.XPackPlugin;
import org.elasticsearch.xpack.core.XPackSettings;

import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Runs one real Elasticsearch node in this JVM: HTTP on 127.0.0.1:PORT, data under HOME.
 * Usage: EsNode --port 9200 --home DIR [-E key=value ...]
 * Prints "READY http://127.0.0.1:PORT" on stdout once the node serves requests; logs go to stderr.
 * Stops cleanly on SIGTERM/SIGINT.
 * Without security (xpack.security.enabled=false, the default here). With -E xpack.security.enabled=true it loads
 * the security plugin, whose jars must then be on the classpath (build.sh's jars-security), and takes its settings
 * (TLS, realms, license) from -E; tests/services/elasticsearch.py's start_secure shows a complete set.
 */
public class EsNode {
    public static void main(String[] args) throws Exception {
        // JVM options the real distribution passes (config/jvm.options); must be set before log4j/netty load.
        // Without the first one log4j's own shutdown hook races ours and the node's shutdown goes unlogged.
        for (String kv : List.of("log4j.shutdownHookEnabled=false", "log4j2.disable.jmx=true", "log4j2.formatMsgNoLookups=true",
                "io.netty.noUnsafe=true", "io.netty.noKeySetOptimization=true", "io.netty.recycler.maxCapacityPerThread=0")) {
            String[] p = kv.split("=", 2);
            if (System.getProperty(p[0]) == null) System.setProperty(p[0], p[1]);
        }
        int port = Integer.getInteger("es.port", 9200);
        String homeArg = System.getProperty("es.home");
        Settings.Builder extra = Settings.builder();
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--port" -> port = Integer.parseInt(args[++i]);
                case "--home" -> homeArg = args[++i];
                case "-E" -> {
                    String[] kv = args[++i].split("=", 2);
                    extra.put(kv[0], kv[1]);
                }
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        if (homeArg == null) throw new IllegalArgumentException("--home DIR is required");
        Path home = Path.of(homeArg).toAbsolutePath();
        Path config = Files.createDirectories(home.resolve("config"));
        Path log4j = config.resolve("log4j2.properties");
        if (Files.exists(log4j) == false) {
            Files.writeString(log4j, String.join("\n",
                "status = error",
                "appender.console.type = Console",
                "appender.console.name = console",
                "appender.console.target = SYSTEM_ERR",
                "appender.console.layout.type = PatternLayout",
                "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name] %m%n",
                "rootLogger.level = info",
                "rootLogger.appenderRef.console.ref = console", ""));
        }
        Settings given = extra.build();
        // Security is on by default in Elasticsearch 8, off here unless -E xpack.security.enabled=true
        boolean secure = given.getAsBoolean(XPackSettings.SECURITY_ENABLED.getKey(), false);
        Settings settings = Settings.builder()
            .put("cluster.name", "observer-test")
            .put("node.name", "node-1")
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("network.host", "127.0.0.1")
            .put("http.port", port)
            .put("transport.port", 0) // transport is unused by clients; any free loopback port
            .put("discovery.type", "single-node")
            // security wraps netty4 in its own transports (TLS, authentication), named security4
            .put("http.type", secure ? "security4" : "netty4")
            .put("transport.type", secure ? "security4" : "netty4")
            .put("xpack.security.enabled", false)
            .put("xpack.license.self_generated.type", "basic")
            // a nearly full disk on a dev machine must not make test indices read-only
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put(given)
            .build();

        // The real launcher also runs bootstrap checks, native init (which refuses root) and the security manager /
        // entitlements; none of them is needed for a loopback-only test node, so they are skipped here.
        PrintStream stdout = System.out; // LogConfigurator.configure redirects System.out into the log
        LogConfigurator.configureESLogging();
        LogConfigurator.setNodeName("node-1");
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), config, () -> "node-1");
        LogConfigurator.configure(env, true);
        // Plugins that are normally loaded from modules/ bundles, here from the classpath.
        List<Class<? extends Plugin>> plugins = new ArrayList<>(List.of(Netty4Plugin.class, XPackPlugin.class, RestCompatPlugin.class));
        if (secure) {
            // By name: its jars (build.sh's jars-security) are on the classpath of a secure node only.
            plugins.add(Class.forName("org.elasticsearch.xpack.security.SecurityWithoutSaml").asSubclass(Plugin.class));
            plugins.add(SecurityIndexAnalysisPlugin.class);
        }
        Node node = new ClasspathNode(env, plugins);

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.prepareForClose();
                node.close();
                node.awaitClose(10, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            }
            stdout.println("STOPPED");
            stdout.flush();
            stopped.countDown();
        }, "es-shutdown"));
        node.start();
        boolean https = secure && settings.getAsBoolean("xpack.security.http.ssl.enabled", false);
        stdout.println("READY " + (https ? "https" : "http") + "://127.0.0.1:" + port);
        stdout.flush();
        stopped.await(); // all Elasticsearch threads are daemons: keep the JVM alive until a signal
    }
}
