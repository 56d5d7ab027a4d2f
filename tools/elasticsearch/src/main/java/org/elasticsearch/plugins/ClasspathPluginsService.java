package org.elasticsearch.plugins;

import org.elasticsearch.Build;
import org.elasticsearch.action.admin.cluster.node.info.PluginsAndModules;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.spi.SPIClassIterator;

import java.lang.reflect.Constructor;
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
                T extension = createExtension(c, lp.instance());
                if (extension != null) created.put(c, extension);
            }
        }
        return List.copyOf(created.values());
    }

    /**
     * PluginsService.createExtension's rule (the plugin constructor if there is one, else the no-argument one),
     * except that the plugin may be a subclass of the constructor's parameter type (SecurityWithoutSaml
     * for extensions that take Security). Null when the constructor wants another plugin: another plugin will match.
     */
    private static <T> T createExtension(Class<? extends T> c, Plugin plugin) {
        Constructor<?> withPlugin = null;
        Constructor<?> withoutArguments = null;
        for (Constructor<?> constructor : c.getConstructors()) {
            if (constructor.getParameterCount() == 1) withPlugin = constructor;
            if (constructor.getParameterCount() == 0) withoutArguments = constructor;
        }
        try {
            if (withPlugin != null) {
                return withPlugin.getParameterTypes()[0].isInstance(plugin) ? c.cast(withPlugin.newInstance(plugin)) : null;
            }
            return withoutArguments == null ? null : c.cast(withoutArguments.newInstance());
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("failed to create extension [" + c.getName() + "]", e);
        }
    }
}
