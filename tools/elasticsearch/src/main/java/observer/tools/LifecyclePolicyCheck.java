package observer.tools;

import org.elasticsearch.core.TimeValue;
import org.elasticsearch.xcontent.NamedXContentRegistry;
import org.elasticsearch.xcontent.ParseField;
import org.elasticsearch.xcontent.XContentParser;
import org.elasticsearch.xcontent.XContentParserConfiguration;
import org.elasticsearch.xcontent.json.JsonXContent;
import org.elasticsearch.xpack.core.ilm.AllocateAction;
import org.elasticsearch.xpack.core.ilm.DeleteAction;
import org.elasticsearch.xpack.core.ilm.DownsampleAction;
import org.elasticsearch.xpack.core.ilm.ForceMergeAction;
import org.elasticsearch.xpack.core.ilm.FreezeAction;
import org.elasticsearch.xpack.core.ilm.LifecycleAction;
import org.elasticsearch.xpack.core.ilm.LifecyclePolicy;
import org.elasticsearch.xpack.core.ilm.LifecycleType;
import org.elasticsearch.xpack.core.ilm.MigrateAction;
import org.elasticsearch.xpack.core.ilm.ReadOnlyAction;
import org.elasticsearch.xpack.core.ilm.RolloverAction;
import org.elasticsearch.xpack.core.ilm.SearchableSnapshotAction;
import org.elasticsearch.xpack.core.ilm.SetPriorityAction;
import org.elasticsearch.xpack.core.ilm.ShrinkAction;
import org.elasticsearch.xpack.core.ilm.Step;
import org.elasticsearch.xpack.core.ilm.TimeseriesLifecycleType;
import org.elasticsearch.xpack.core.ilm.UnfollowAction;
import org.elasticsearch.xpack.core.ilm.WaitForSnapshotAction;
import org.elasticsearch.xpack.core.ilm.action.PutLifecycleRequest;

import java.util.List;

/**
 * Checks a {@code PUT _ilm/policy/<name>} body the way Elasticsearch's ILM module does before it
 * stores a policy, with the classes that module uses (x-pack-core; the module itself, x-pack-ilm,
 * is not published as a jar, so no test node can run ILM).
 *
 * <p>The body is read from stdin and parsed by {@link PutLifecycleRequest#parseRequest} with the
 * lifecycle type and actions the module registers (an unknown field, phase or action is an
 * error); the request is validated; the policy is turned into the steps ILM would run. Prints
 * "VALID", then one line per step ({@code phase/action/step}); on a policy Elasticsearch would
 * answer 400, prints "INVALID" and the reason on stdout and exits 1.
 *
 * <pre>java -cp "$DIR/jars/*:$DIR/classes" observer.tools.LifecyclePolicyCheck NAME &lt; body.json</pre>
 */
public class LifecyclePolicyCheck {
    /** What x-pack-ilm's IndexLifecycle plugin registers for parsing policies. */
    static NamedXContentRegistry registry() {
        return new NamedXContentRegistry(
            List.of(
                new NamedXContentRegistry.Entry(
                    LifecycleType.class,
                    new ParseField(TimeseriesLifecycleType.TYPE),
                    parser -> TimeseriesLifecycleType.INSTANCE
                ),
                action(AllocateAction.NAME, AllocateAction::parse),
                action(DeleteAction.NAME, DeleteAction::parse),
                action(ForceMergeAction.NAME, ForceMergeAction::parse),
                action(ReadOnlyAction.NAME, ReadOnlyAction::parse),
                action(RolloverAction.NAME, RolloverAction::parse),
                action(ShrinkAction.NAME, ShrinkAction::parse),
                action(WaitForSnapshotAction.NAME, WaitForSnapshotAction::parse),
                action(FreezeAction.NAME, FreezeAction::parse),
                action(SetPriorityAction.NAME, SetPriorityAction::parse),
                action(UnfollowAction.NAME, UnfollowAction::parse),
                action(MigrateAction.NAME, MigrateAction::parse),
                action(SearchableSnapshotAction.NAME, SearchableSnapshotAction::parse),
                action(DownsampleAction.NAME, DownsampleAction::parse)
            )
        );
    }

    interface ActionParser {
        LifecycleAction parse(XContentParser parser) throws java.io.IOException;
    }

    static NamedXContentRegistry.Entry action(String name, ActionParser parser) {
        return new NamedXContentRegistry.Entry(LifecycleAction.class, new ParseField(name), parser::parse);
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: LifecyclePolicyCheck POLICY_NAME < body.json");
            System.exit(2);
        }
        String name = args[0];
        byte[] body = System.in.readAllBytes();
        PutLifecycleRequest request;
        try (
            XContentParser parser = JsonXContent.jsonXContent.createParser(
                XContentParserConfiguration.EMPTY.withRegistry(registry()),
                body
            )
        ) {
            LifecyclePolicy.validatePolicyName(name);
            request = PutLifecycleRequest.parseRequest(new PutLifecycleRequest.Factory() {
                public PutLifecycleRequest create(LifecyclePolicy policy) {
                    return new PutLifecycleRequest(TimeValue.THIRTY_SECONDS, TimeValue.THIRTY_SECONDS, policy);
                }

                public String getPolicyName() {
                    return name;
                }
            }, parser);
            var invalid = request.validate();
            if (invalid != null) {
                throw invalid;
            }
        } catch (Exception e) {
            Throwable cause = e;
            StringBuilder reason = new StringBuilder(String.valueOf(e.getMessage()));
            while (cause.getCause() != null && cause.getCause() != cause) {
                cause = cause.getCause();
                reason.append(": ").append(cause.getMessage());
            }
            System.out.println("INVALID " + reason);
            System.exit(1);
            return;
        }
        System.out.println("VALID");
        // No client: the steps are only listed, never run.
        for (Step step : request.getPolicy().toSteps(null, null)) {
            Step.StepKey key = step.getKey();
            System.out.println(key.phase() + "/" + key.action() + "/" + key.name());
        }
    }
}
