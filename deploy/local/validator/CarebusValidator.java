// carebus's entry point to the HL7 FHIR reference validator (HAPI FHIR validation 8.8.1, R4).
//
//   java -cp '<libs>/*:<classes>' CarebusValidator <conformance-dir> <input-dir> <results.json>
//        [--client <base-url> <patient-id> <page-size> <client.json>]
//
// With --client, the same JVM first runs the HAPI generic client against a live record API
// (CarebusClientCheck.java: read, search paged to the end, history since, conditional read; strict parsing).
//
// One JVM validates every *.json resource of <input-dir> (one resource per file, sorted by name) against the
// R4 core definitions, the HL7 code systems and value sets (terminology.hl7.org, as shipped with R4), the
// common external ones HAPI knows offline (UCUM, BCP-47 languages, ISO countries, MIME types) and the
// StructureDefinitions / ValueSets / CodeSystems in <conformance-dir> (US Core 6.1.0 and SDC's
// sdc-questionnaireresponse; their snapshots are generated here). A code system the validator does not know
// (LOINC, SNOMED CT, RxNorm, a sender's local system) gives a warning, not an error. A profile in meta.profile
// that is not loaded is an error.
//
// <results.json>: [{"file", "errors": [{"location", "message", "messageId"}], "warnings": [...],
// "information": n}, ...] in input order. Progress goes to stderr. Exit code 0 when every file was read and
// validated (whatever the findings), 2 on bad arguments or unreadable conformance resources.

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.parser.IParser;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.UnknownCodeSystemWarningValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.instance.model.api.IBaseResource;

import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.stream.Collectors;
import java.util.stream.Stream;

public final class CarebusValidator {
    private CarebusValidator() {
    }

    public static void main(String[] args) throws IOException {
        boolean client = args.length == 8 && "--client".equals(args[3]);
        if (args.length != 3 && !client) {
            System.err.println("usage: CarebusValidator <conformance-dir> <input-dir> <results.json> "
                    + "[--client <base-url> <patient-id> <page-size> <client.json>]");
            System.exit(2);
        }
        Locale.setDefault(Locale.ENGLISH);
        if (client) {
            CarebusClientCheck.run(args[4], args[5], Integer.parseInt(args[6]), Path.of(args[7]));
        }
        long started = System.nanoTime();
        FhirContext context = FhirContext.forR4Cached();
        PrePopulatedValidationSupport conformance = loadConformance(context, Path.of(args[0]));

        UnknownCodeSystemWarningValidationSupport unknownSystems = new UnknownCodeSystemWarningValidationSupport(context);
        unknownSystems.setNonExistentCodeSystemSeverity(IValidationSupport.IssueSeverity.WARNING);
        ValidationSupportChain chain = new ValidationSupportChain(
                new DefaultProfileValidationSupport(context),
                conformance,
                new CommonCodeSystemsTerminologyService(context),
                new InMemoryTerminologyServerValidationSupport(context),
                new SnapshotGeneratingValidationSupport(context),
                unknownSystems);
        FhirInstanceValidator instanceValidator = new FhirInstanceValidator(chain);
        instanceValidator.setErrorForUnknownProfiles(true);
        FhirValidator validator = context.newValidator().registerValidatorModule(instanceValidator);

        List<Path> inputs;
        try (Stream<Path> files = Files.list(Path.of(args[1]))) {
            inputs = files.filter(p -> p.toString().endsWith(".json")).sorted().collect(Collectors.toList());
        }
        System.err.printf("carebus validator: %d conformance resources loaded in %.1f s; validating %d resources%n",
                conformance.countAll(), (System.nanoTime() - started) / 1e9, inputs.size());

        try (Writer out = Files.newBufferedWriter(Path.of(args[2]), StandardCharsets.UTF_8)) {
            out.write("[\n");
            int done = 0;
            for (Path input : inputs) {
                String text = Files.readString(input, StandardCharsets.UTF_8);
                ValidationResult result = validator.validateWithResult(text);
                List<SingleValidationMessage> errors = new ArrayList<>();
                List<SingleValidationMessage> warnings = new ArrayList<>();
                int information = 0;
                for (SingleValidationMessage message : result.getMessages()) {
                    ResultSeverityEnum severity = message.getSeverity();
                    if (severity == ResultSeverityEnum.ERROR || severity == ResultSeverityEnum.FATAL) {
                        errors.add(message);
                    } else if (severity == ResultSeverityEnum.WARNING) {
                        warnings.add(message);
                    } else {
                        information++;
                    }
                }
                out.write(done == 0 ? "" : ",\n");
                out.write("{\"file\":" + quote(input.getFileName().toString()) + ",\"errors\":" + messages(errors)
                        + ",\"warnings\":" + messages(warnings) + ",\"information\":" + information + "}");
                done++;
                if (done % 100 == 0) {
                    System.err.printf("carebus validator: %d of %d validated (%.1f s)%n", done, inputs.size(),
                            (System.nanoTime() - started) / 1e9);
                }
            }
            out.write("\n]\n");
        }
        System.err.printf("carebus validator: %d resources validated in %.1f s%n", inputs.size(),
                (System.nanoTime() - started) / 1e9);
    }

    private static PrePopulatedValidationSupport loadConformance(FhirContext context, Path folder) throws IOException {
        PrePopulatedValidationSupport support = new PrePopulatedValidationSupport(context);
        List<Path> files;
        try (Stream<Path> listed = Files.list(folder)) {
            files = listed.sorted().collect(Collectors.toList());
        }
        for (Path file : files) {
            String name = file.getFileName().toString();
            IParser parser;
            if (name.endsWith(".json")) {
                parser = context.newJsonParser();
            } else if (name.endsWith(".xml")) {
                parser = context.newXmlParser();
            } else {
                continue;
            }
            try {
                IBaseResource resource = parser.parseResource(Files.readString(file, StandardCharsets.UTF_8));
                support.addResource(resource);
            } catch (RuntimeException exc) {
                System.err.println("carebus validator: cannot load conformance resource " + name + ": " + exc.getMessage());
                System.exit(2);
            }
        }
        return support;
    }

    private static String messages(List<SingleValidationMessage> found) {
        StringBuilder out = new StringBuilder("[");
        for (int i = 0; i < found.size(); i++) {
            SingleValidationMessage message = found.get(i);
            if (i > 0) {
                out.append(',');
            }
            out.append("{\"location\":").append(quote(message.getLocationString()))
                    .append(",\"message\":").append(quote(message.getMessage()))
                    .append(",\"messageId\":").append(quote(message.getMessageId())).append('}');
        }
        return out.append(']').toString();
    }

    static String quote(String value) {
        if (value == null) {
            return "null";
        }
        StringBuilder out = new StringBuilder("\"");
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        return out.append('"').toString();
    }
}
