// The HAPI FHIR generic client (hapi-fhir-client 8.8.1, R4) against a live carebus record API: a strict client,
// as EHR vendors run it. Called by CarebusValidator in the same JVM (tests/validation/hapi.py):
//
//   ... CarebusValidator <conformance-dir> <input-dir> <results.json> --client <base-url> <patient-id> <page-size> <client.json>
//
// The bearer token comes from the environment (CAREBUS_CLIENT_TOKEN), never the command line. Every response is
// parsed with HAPI's StrictErrorHandler (an unknown element, a bad value or a wrong type fails the check), and the
// client checks the server's CapabilityStatement once before its first request. Checks, in order:
//   read          read().resource(Patient).withId(id)
//   search        search Observation?patient=<id> with _count=<page-size>, then loadPage().next() to the end
//   history       history().onInstance(Patient/id).since(<instant with a +02:00 offset>): at least one entry,
//                 and since(<the future, +05:30>): none
//   conditional   read ... ifVersionMatches(<current version>).returnNull(): null (304 Not Modified); with a
//                 version the server does not have: the resource (200)
// <client.json>: {"checks": [{"name", "ok", "detail"}], "requests": [every request URI as sent], "statuses": [...],
// "search": {"pages", "ids", "total"}, "history": {"since", "later"}}.

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.model.api.TemporalPrecisionEnum;
import ca.uhn.fhir.parser.StrictErrorHandler;
import ca.uhn.fhir.rest.client.api.IClientInterceptor;
import ca.uhn.fhir.rest.client.api.IGenericClient;
import ca.uhn.fhir.rest.client.api.IHttpRequest;
import ca.uhn.fhir.rest.client.api.IHttpResponse;
import ca.uhn.fhir.rest.client.api.ServerValidationModeEnum;
import ca.uhn.fhir.rest.client.interceptor.BearerTokenAuthInterceptor;
import org.hl7.fhir.instance.model.api.IBaseBundle;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.IdType;
import org.hl7.fhir.r4.model.InstantType;
import org.hl7.fhir.r4.model.Observation;
import org.hl7.fhir.r4.model.Patient;

import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Date;
import java.util.List;
import java.util.TimeZone;

final class CarebusClientCheck {
    private final List<String> checks = new ArrayList<>();
    private final List<String> requests = new ArrayList<>();
    private final List<Integer> statuses = new ArrayList<>();
    private final List<String> searchIds = new ArrayList<>();
    private int pages;
    private int total = -1;
    private int historySince = -1;
    private int historyLater = -1;

    private CarebusClientCheck() {
    }

    static void run(String baseUrl, String patientId, int pageSize, Path out) throws IOException {
        long started = System.nanoTime();
        CarebusClientCheck check = new CarebusClientCheck();
        FhirContext context = FhirContext.forR4();  // its own context: strict parsing must not touch the validator's
        context.setParserErrorHandler(new StrictErrorHandler());
        context.getRestfulClientFactory().setServerValidationMode(ServerValidationModeEnum.ONCE);
        context.getRestfulClientFactory().setSocketTimeout(60_000);
        IGenericClient client = context.newRestfulGenericClient(baseUrl);
        String token = System.getenv("CAREBUS_CLIENT_TOKEN");
        if (token != null && !token.isEmpty()) {
            client.registerInterceptor(new BearerTokenAuthInterceptor(token));
        }
        client.registerInterceptor(new IClientInterceptor() {
            @Override
            public void interceptRequest(IHttpRequest request) {
                check.requests.add(request.getUri());
            }

            @Override
            public void interceptResponse(IHttpResponse response) {
                check.statuses.add(response.getStatus());
            }
        });

        String[] version = new String[1];
        Instant[] updated = new Instant[1];
        check.step("read", () -> {
            Patient patient = client.read().resource(Patient.class).withId(patientId).execute();
            version[0] = patient.getMeta().getVersionId();
            updated[0] = patient.getMeta().getLastUpdated().toInstant();
            require(patientId.equals(patient.getIdElement().getIdPart()), "read returned another Patient");
            require(version[0] != null && updated[0] != null, "no meta.versionId / meta.lastUpdated");
            return "Patient/" + patientId + " version " + version[0];
        });
        check.step("search", () -> {
            Bundle page = client.search().forResource(Observation.class)
                    .where(Observation.PATIENT.hasId(patientId)).count(pageSize)
                    .returnBundle(Bundle.class).execute();
            check.total = page.hasTotal() ? page.getTotal() : -1;
            while (true) {
                check.pages++;
                for (Bundle.BundleEntryComponent entry : page.getEntry()) {
                    boolean match = !entry.hasSearch() || entry.getSearch().getMode() == null
                            || entry.getSearch().getMode() == Bundle.SearchEntryMode.MATCH;
                    if (match && entry.getResource() instanceof Observation observation) {
                        check.searchIds.add(observation.getIdElement().getIdPart());
                    }
                }
                if (page.getLink(IBaseBundle.LINK_NEXT) == null) {
                    break;
                }
                require(check.pages < 1000, "more than 1000 pages: the next links do not end");
                page = client.loadPage().next(page).execute();
            }
            return check.searchIds.size() + " Observations in " + check.pages + " pages";
        });
        check.step("history", () -> {
            require(updated[0] != null, "no Patient read");
            InstantType since = new InstantType(Date.from(updated[0].minus(1, ChronoUnit.HOURS)),
                    TemporalPrecisionEnum.SECOND, TimeZone.getTimeZone("GMT+02:00"));
            Bundle history = client.history().onInstance(new IdType("Patient", patientId))
                    .returnBundle(Bundle.class).since(since).execute();
            check.historySince = history.getEntry().size();
            InstantType later = new InstantType(Date.from(Instant.now().plus(1, ChronoUnit.DAYS)),
                    TemporalPrecisionEnum.SECOND, TimeZone.getTimeZone("GMT+05:30"));
            Bundle none = client.history().onInstance(new IdType("Patient", patientId))
                    .returnBundle(Bundle.class).since(later).execute();
            check.historyLater = none.getEntry().size();
            require(check.historySince >= 1, "history since an hour before lastUpdated has no entry");
            require(check.historyLater == 0, "history since tomorrow has entries");
            return "since " + since.getValueAsString() + ": " + check.historySince + " entries";
        });
        check.step("conditional", () -> {
            require(version[0] != null, "no Patient read");
            Patient same = client.read().resource(Patient.class).withId(patientId).ifVersionMatches(version[0])
                    .returnNull().execute();
            require(same == null, "If-None-Match with the current version did not answer 304 Not Modified");
            Patient other = client.read().resource(Patient.class).withId(patientId).ifVersionMatches("999999")
                    .returnNull().execute();
            require(other != null, "If-None-Match with another version did not return the resource");
            return "304 for version " + version[0] + ", 200 for another";
        });
        check.write(out);
        System.err.printf("carebus client check: %d requests in %.1f s%n", check.requests.size(),
                (System.nanoTime() - started) / 1e9);
    }

    private interface Step {
        String run() throws Exception;
    }

    private void step(String name, Step step) {
        String detail;
        boolean ok;
        try {
            detail = step.run();
            ok = true;
        } catch (Exception | AssertionError exc) {
            detail = exc.getClass().getSimpleName() + ": " + exc.getMessage();
            ok = false;
        }
        checks.add("{\"name\":" + CarebusValidator.quote(name) + ",\"ok\":" + ok + ",\"detail\":"
                + CarebusValidator.quote(detail) + "}");
    }

    private static void require(boolean condition, String message) {
        if (!condition) {
            throw new AssertionError(message);
        }
    }

    private void write(Path out) throws IOException {
        List<String> quoted = new ArrayList<>();
        requests.forEach(uri -> quoted.add(CarebusValidator.quote(uri)));
        List<String> ids = new ArrayList<>();
        searchIds.forEach(id -> ids.add(CarebusValidator.quote(id)));
        try (Writer writer = Files.newBufferedWriter(out, StandardCharsets.UTF_8)) {
            writer.write("{\"checks\":[" + String.join(",", checks) + "],\"requests\":[" + String.join(",", quoted)
                    + "],\"statuses\":" + statuses + ",\"search\":{\"pages\":" + pages + ",\"total\":" + total
                    + ",\"ids\":[" + String.join(",", ids) + "]},\"history\":{\"since\":" + historySince
                    + ",\"later\":" + historyLater + "}}\n");
        }
    }
}
