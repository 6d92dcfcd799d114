#!/usr/bin/env bash
# Installs the system tools carebus needs on a fresh Debian machine: Java 17+ and Maven (the local Kafka
# broker is resolved from Maven Central and run on the JVM), PostgreSQL for the record store's tests, and a C
# compiler with the Python headers (mypyc compiles the mapping modules, setup.py), and javac for the HL7 FHIR
# validator's entry point (deploy/local/validator/, compiled when the test session provisions it).
# Does nothing when they are already there.
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need+=(postgresql); fi
command -v gcc >/dev/null 2>&1 || need+=(gcc)
python_h="$("${PYTHON:-python3}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h"
[ -f "$python_h" ] || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "carebus: installing ${need[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
