"""Wire formats for spans: decode and encode only, no I/O.

Inside observer a batch of spans is what OTLP carries: a list of
`opentelemetry.proto.trace.v1.trace_pb2.ResourceSpans`. The agent enriches at the resource
level and routes by trace id without unpacking spans it only passes on; Zipkin v2 is
converted into that shape on arrival.

What Zipkin says and OTLP has no field for travels as span attributes under these names,
so the collector can undo what the conversion had to flatten.
"""

# Zipkin's `shared: true`: this SERVER span reuses the span id of the CLIENT span that
# called it (B3 propagation without a new id, as Envoy and Zipkin's own tracers do). The
# collector splits such a pair into a client and a server span.
ZIPKIN_SHARED = "observer.zipkin.shared"

# The bit length of the Zipkin trace id as sent (64 or 128). OTLP trace ids are 16 bytes;
# a 64-bit B3 id is left-padded with zeros and marked 64 here, so it can be told apart
# from a 128-bit id whose high half happens to be zero, and written back as it came.
ZIPKIN_TRACE_ID_BITS = "observer.zipkin.trace_id_bits"
