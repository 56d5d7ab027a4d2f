package org.elasticsearch.plugins;

import org.elasticsearch.Build;
import org.elasticsearch.action.admin.cluster.node.info.PluginsAndModules;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.spi.SPIClassIterator;

import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A PluginsService whose plugins are classes already on the application classpath (no plugin
 * bundles on disk). Same idea as the test framework's MockPluginsService, without its dependency
 * on ESTestCase (whose static init refuses to run as root and pulls in JUnit/randomizedtesting).
 * Lives in this package because LoadedPlugin, loadPlugin, loadExtensions are package-private.
 */
public class ClasspathPluginsService extends PluginsService {
    private final List<LoadedPlugin> classpathPlugins;

    public ClasspathPluginsService(Settings settings, Environment env, Collection<Class<? extends Plugin>> classes) {
        super(settings, env.configDir(), new PluginsLoader(Set.of(), Set.of(), Map.of()));
        List<LoadedPlugin> loaded = new ArrayList<>();
        for (Class<? extends Plugin> c : classes) {
            Plugin p = loadPlugin(c, settings, env.configDir());
            PluginDescriptor d = new PluginDescriptor(c.getName(), "classpath plugin", "NA", Build.current().version(),
                Integer.toString(Runtime.version().feature()), c.getName(), null, List.of(), false, false, false, false);
            loaded.add(new LoadedPlugin(d, p, ClasspathPluginsService.class.getClassLoader()));
        }
        loadExtensions(loaded);
        this.classpathPlugins = List.copyOf(loaded);
    }

    @Override
    protected final List<LoadedPlugin> plugins() {
        return classpathPlugins;
    }

    @Override
    public PluginsAndModules info() {
        return new PluginsAndModules(classpathPlugins.stream().map(p -> new PluginRuntimeInfo(p.descriptor())).toList(), List.of());
    }

    /** All plugins share one class loader, so every SPI class is seen once per plugin: create each class only once. */
    @Override
    public <T> List<? extends T> loadServiceProviders(Class<T> service) {
        List<Class<? extends T>> spiClasses = new ArrayList<>();
        SPIClassIterator.get(service, ClasspathPluginsService.class.getClassLoader()).forEachRemaining(spiClasses::add);
        Map<Class<?>, T> created = new LinkedHashMap<>();
        for (LoadedPlugin lp : classpathPlugins) {
            for (Class<? extends T> c : spiClasses) {
                if (created.containsKey(c)) continue;
                try {
                    created.put(c, createExtension(c, service, lp.instance()));
                } catch (IllegalStateException wrongPluginForConstructor) {
                    // the constructor wants a different plugin type; another plugin will match
                }
            }
        }
        return List.copyOf(created.values());
    }
}
