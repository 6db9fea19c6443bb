// The OpenTelemetry JS SDK's log pipeline (package.json pins it: 0.223.1, the newest 0.x that
// runs on Node 20; 0.203.x sends Uint8Array attributes as {"0":..} objects and drops the URL's
// query string) against logwriter, for tests/test_otlp_js.py:
//
//   node client.js json|proto SERVICE_NAME [partial]
//
// json: @opentelemetry/exporter-logs-otlp-http (OTLP/JSON); proto: -otlp-proto (protobuf).
// The endpoint, headers and compression come from OTEL_EXPORTER_OTLP_* as for any app. The
// records are fixed, timestamps included, so the test knows each line to the byte; "partial"
// adds one whose line is too long for the test's LOGWRITER_MAX_LINE_BYTES.
//
// The SDK's own diagnostics (a DiagConsoleLogger at WARN) go to stderr: any complaint about our
// answers shows there. Each export's result goes to stdout as JSON once the provider is shut
// down.
'use strict';

const { context, diag, DiagConsoleLogger, DiagLogLevel, trace, TraceFlags } = require('@opentelemetry/api');
const { SeverityNumber } = require('@opentelemetry/api-logs');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { BatchLogRecordProcessor, LoggerProvider } = require('@opentelemetry/sdk-logs');

diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN);

const [kind, service, mode] = process.argv.slice(2);
const { OTLPLogExporter } = require(
  kind === 'proto' ? '@opentelemetry/exporter-logs-otlp-proto' : '@opentelemetry/exporter-logs-otlp-http',
);

const exporter = new OTLPLogExporter();
const results = [];
const exportBatch = exporter.export.bind(exporter);
exporter.export = (logs, done) =>
  exportBatch(logs, (result) => {
    results.push({ code: result.code, records: logs.length, error: result.error ? String(result.error) : null });
    done(result);
  });

const provider = new LoggerProvider({
  resource: resourceFromAttributes({ 'service.name': service, 'service.version': '0.0.1' }),
  processors: [new BatchLogRecordProcessor({ exporter })],
});
const logger = provider.getLogger('app.js', '1.2.3');

// 2026-12-01T06:27:51.123456789Z plus `n` ms: HrTime keeps the nanoseconds.
const at = (n) => [1796106471, 123456789 + n * 1000000];
const emit = (n, record) => logger.emit({ timestamp: at(n), observedTimestamp: at(n + 500), ...record });

emit(0, {
  severityNumber: SeverityNumber.INFO,
  severityText: 'INFO',
  body: 'plain message',
  attributes: { 'user.id': 42, ratio: 0.5, ok: true, tags: ['a', 'b'], big: 2 ** 53 },
});
emit(1, { severityNumber: SeverityNumber.INFO2, body: 'no severity text, number 10' });
emit(2, { severityNumber: SeverityNumber.WARN, severityText: 'warn', body: 'non-ASCII: café 日本語 🚀 "quoted" \\ backslash' });
emit(3, { severityNumber: SeverityNumber.DEBUG, body: 'multi-line\nsecond line\r\n\tthird' });
emit(4, {
  severityNumber: SeverityNumber.INFO,
  body: { structured: { nested: [1, 'two', null] }, n: 3.25 },
  attributes: { bytes: new Uint8Array([0, 1, 2, 255]) },
});
emit(5, { eventName: 'app.checkout.done', severityNumber: SeverityNumber.INFO, body: 'an event' });
emit(6, {
  severityNumber: SeverityNumber.ERROR,
  severityText: 'ERROR',
  body: 'something failed',
  attributes: { 'exception.type': 'Error', 'exception.message': 'boom', 'exception.stacktrace': 'Error: boom\n    at main (app.js:1:1)' },
});
const span = { traceId: '5b8efff798038103d269b633813fc60c', spanId: 'eee19b7ec3c1b174', traceFlags: TraceFlags.SAMPLED };
emit(7, { severityNumber: SeverityNumber.ERROR, body: 'inside a span', context: trace.setSpanContext(context.active(), span) });
if (mode === 'partial') {
  emit(8, { severityNumber: SeverityNumber.INFO, body: 'x'.repeat(5000) });
}

provider
  .forceFlush()
  .then(() => provider.shutdown())
  .then(() => process.stdout.write(JSON.stringify({ results }) + '\n'));
