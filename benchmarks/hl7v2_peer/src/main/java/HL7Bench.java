import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.github.linuxforhealth.hl7.ConverterOptions;
import io.github.linuxforhealth.hl7.HL7ToFHIRConverter;
import java.io.File;
import java.lang.management.CompilationMXBean;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.util.Locale;
import java.util.stream.Collectors;

/**
 * Peer harness of benchmarks/hl7v2_bench.py: converts HL7 v2 messages with the LinuxForHealth
 * hl7v2-fhir-converter on one thread and reports messages/s and failures.
 *
 * <pre>
 *   java -cp classes:lib/* HL7Bench MESSAGES.json [--warmup WARMUP.json] [--warmup-passes 10]
 *        [--min-warmup-passes 3] [--jit-quiet 0.02] [--passes 1] [--validate]
 * </pre>
 *
 * <p>MESSAGES.json (and WARMUP.json) is a JSON list of ER7 strings, segments separated by CR. The harness first
 * converts the warm-up list (default: the measured list itself) in passes, not timed, to let the JIT compile
 * the hot code: at least --min-warmup-passes, at most --warmup-passes, stopping once the JIT compiled for less
 * than --jit-quiet of a pass's wall time. Then it converts the measured list --passes times, timing each call.
 * With a separate warm-up list of other messages (other control and patient ids) nothing measured has been
 * converted before.
 *
 * <p>One converter instance is reused, as an application would hold it (its constructor loads every YAML
 * template, seconds); each call is {@code converter.convert(message, options)}: HAPI parse, the template
 * mapping, and the Bundle encoded as JSON. With --validate the converter's own HAPI resource validation is on.
 *
 * <p>Output: progress lines on stderr; human-readable summary lines on stdout, then one last line "RESULT "
 * followed by a JSON object with, per measured message, its wall and thread-CPU nanoseconds and failure count,
 * so the caller can compare any subset. Messages and exception texts are never printed (they may carry PHI),
 * only exception class names.
 */
public final class HL7Bench {
  private HL7Bench() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 1) {
      usage();
    }
    File input = new File(args[0]);
    File warmupInput = null;
    int warmupPasses = 10;
    int minWarmupPasses = 3;
    double jitQuiet = 0.02;
    int passes = 1;
    boolean validate = false;
    for (int i = 1; i < args.length; i++) {
      switch (args[i]) {
        case "--warmup" -> warmupInput = new File(args[++i]);
        case "--warmup-passes" -> warmupPasses = Integer.parseInt(args[++i]);
        case "--min-warmup-passes" -> minWarmupPasses = Integer.parseInt(args[++i]);
        case "--jit-quiet" -> jitQuiet = Double.parseDouble(args[++i]);
        case "--passes" -> passes = Integer.parseInt(args[++i]);
        case "--validate" -> validate = true;
        default -> usage();
      }
    }
    ObjectMapper json = new ObjectMapper();
    String[] messages = json.readValue(input, String[].class);
    String[] warmupMessages = warmupInput == null ? messages : json.readValue(warmupInput, String[].class);

    // The converter's default bundle type; the zone only applies to HL7 times that carry no offset.
    ConverterOptions.Builder builder = new ConverterOptions.Builder().withZoneIdText("UTC");
    if (validate) {
      builder = builder.withValidateResource();
    }
    ConverterOptions options = builder.build();

    long constructStart = System.nanoTime();
    HL7ToFHIRConverter converter = new HL7ToFHIRConverter();
    double constructSeconds = (System.nanoTime() - constructStart) / 1e9;

    ThreadMXBean threads = ManagementFactory.getThreadMXBean();
    CompilationMXBean jit = ManagementFactory.getCompilationMXBean();
    long sink = 0;

    long warmStart = System.nanoTime();
    int warmupPassesDone = 0;
    double lastJitShare = Double.NaN;
    while (warmupPassesDone < warmupPasses) {
      long passStart = System.nanoTime();
      long jitStart = jit.getTotalCompilationTime();
      for (String message : warmupMessages) {
        try {
          sink += converter.convert(message, options).length();
        } catch (RuntimeException e) {
          sink += 1;
        }
      }
      warmupPassesDone++;
      double seconds = (System.nanoTime() - passStart) / 1e9;
      lastJitShare = (jit.getTotalCompilationTime() - jitStart) / 1e3 / seconds;
      System.err.printf(Locale.ROOT, "warm-up pass %d: %.0f messages/s, JIT compiling %.0f%% of the pass%n",
          warmupPassesDone, warmupMessages.length / seconds, 100 * lastJitShare);
      if (warmupPassesDone >= minWarmupPasses && lastJitShare < jitQuiet) {
        break;
      }
    }
    double warmSeconds = (System.nanoTime() - warmStart) / 1e9;

    long[] nanos = new long[messages.length];
    long[] cpuNanos = new long[messages.length];
    int[] failures = new int[messages.length];
    String[] failureKinds = new String[messages.length];
    long outputChars = 0;
    long jitBefore = jit.getTotalCompilationTime();
    for (int pass = 0; pass < passes; pass++) {
      long passStart = System.nanoTime();
      for (int i = 0; i < messages.length; i++) {
        long cpu0 = threads.getCurrentThreadCpuTime();
        long t0 = System.nanoTime();
        String result = null;
        String failure = null;
        try {
          result = converter.convert(messages[i], options);
        } catch (RuntimeException e) {
          failure = e.getClass().getName();
        }
        nanos[i] += System.nanoTime() - t0;
        cpuNanos[i] += threads.getCurrentThreadCpuTime() - cpu0;
        if (failure == null && (result == null || result.isEmpty())) {
          failure = "empty output";
        }
        if (failure != null) {
          failures[i]++;
          failureKinds[i] = failure;
        } else {
          outputChars += result.length();
        }
      }
      System.err.printf(Locale.ROOT, "timed pass %d/%d: %.0f messages/s%n", pass + 1, passes,
          messages.length / ((System.nanoTime() - passStart) / 1e9));
    }
    long jitDuringTimedMs = jit.getTotalCompilationTime() - jitBefore;

    long totalNanos = 0;
    long totalCpuNanos = 0;
    long failed = 0;
    for (int i = 0; i < messages.length; i++) {
      totalNanos += nanos[i];
      totalCpuNanos += cpuNanos[i];
      failed += failures[i];
    }
    long conversions = (long) messages.length * passes;
    long warmupConversions = (long) warmupMessages.length * warmupPassesDone;
    double rate = conversions / (totalNanos / 1e9);
    System.out.printf(Locale.ROOT,
        "peer: %d messages x %d passes, after a warm-up of %d passes over %d messages (%d conversions, %.1f s)%n",
        messages.length, passes, warmupPassesDone, warmupMessages.length, warmupConversions, warmSeconds);
    System.out.printf(Locale.ROOT, "peer: %.0f messages/s on one thread, %d failed conversions of %d%n",
        rate, failed, conversions);

    ObjectNode out = json.createObjectNode();
    out.put("java", System.getProperty("java.version"));
    out.put("vm", System.getProperty("java.vm.name"));
    out.put("processors", Runtime.getRuntime().availableProcessors());
    out.put("gc", ManagementFactory.getGarbageCollectorMXBeans().stream()
        .map(GarbageCollectorMXBean::getName).collect(Collectors.joining(", ")));
    out.put("validate", validate);
    out.put("construct_seconds", constructSeconds);
    out.put("warmup_passes", warmupPassesDone);
    out.put("warmup_passes_max", warmupPasses);
    out.put("warmup_passes_min", minWarmupPasses);
    out.put("jit_quiet", jitQuiet);
    out.put("last_warmup_jit_share", lastJitShare);
    out.put("warmup_messages", warmupMessages.length);
    out.put("warmup_conversions", warmupConversions);
    out.put("warmup_seconds", warmSeconds);
    out.put("jit_ms_during_timed", jitDuringTimedMs);
    out.put("passes", passes);
    out.put("conversions", conversions);
    out.put("failed", failed);
    out.put("seconds", totalNanos / 1e9);
    out.put("cpu_seconds", totalCpuNanos / 1e9);
    out.put("messages_per_second", rate);
    out.put("output_chars", outputChars);
    out.put("sink", sink);
    ArrayNode nanosNode = out.putArray("nanos");
    ArrayNode cpuNode = out.putArray("cpu_nanos");
    ArrayNode failuresNode = out.putArray("failures");
    ArrayNode kindsNode = out.putArray("failure_kinds");
    for (int i = 0; i < messages.length; i++) {
      nanosNode.add(nanos[i]);
      cpuNode.add(cpuNanos[i]);
      failuresNode.add(failures[i]);
      kindsNode.add(failureKinds[i]);
    }
    System.out.println("RESULT " + json.writeValueAsString(out));
  }

  private static void usage() {
    System.err.println(
        "usage: HL7Bench MESSAGES.json [--warmup WARMUP.json] [--warmup-passes MAX] [--min-warmup-passes N]"
            + " [--jit-quiet FRACTION] [--passes N] [--validate]");
    System.exit(2);
  }
}
