#!/usr/bin/env python3
"""Prints the RFC 7208 test suite (rfc7208-tests.yml of pyspf) as JSON on stdout, for
tests/spf_suite.rs. The YAML ships inside pyspf's source distribution on PyPI; it is
downloaded once with pip into the cache directory given as the first argument and never
copied into the repository. Needs PyYAML (scripts/test.sh installs it)."""

import glob
import json
import os
import subprocess
import sys
import tarfile

VERSION = "2.0.14"
MEMBER = f"pyspf-{VERSION}/test/rfc7208-tests.yml"


def main():
    cache = sys.argv[1]
    os.makedirs(cache, exist_ok=True)
    yml = os.path.join(cache, f"rfc7208-tests-{VERSION}.yml")
    if not os.path.exists(yml):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", f"pyspf=={VERSION}", "-d", cache],
            check=True, stdout=sys.stderr)
        sdist = glob.glob(os.path.join(cache, f"pyspf-{VERSION}.tar.gz"))
        if not sdist:
            sys.exit(f"pip did not leave pyspf-{VERSION}.tar.gz in {cache}")
        with tarfile.open(sdist[0]) as tar:
            data = tar.extractfile(tar.getmember(MEMBER)).read()
        with open(yml + ".tmp", "wb") as f:
            f.write(data)
        os.replace(yml + ".tmp", yml)
    import yaml
    with open(yml, "rb") as f:
        docs = list(yaml.safe_load_all(f))
    # YAML "\xNN" escapes are characters U+0000..U+00FF standing for bytes: keep them as
    # lists of byte values so that the test serves exactly those bytes.
    def raw(value):
        if isinstance(value, str):
            if all(ord(c) < 256 for c in value):
                return {"bytes": list(value.encode("latin-1"))}
            return {"bytes": list(value.encode("utf-8"))}
        if isinstance(value, list):
            return [raw(v) for v in value]
        return value
    for doc in docs:
        zones = doc.get("zonedata") or {}
        for name, records in zones.items():
            for i, record in enumerate(records):
                if isinstance(record, dict):
                    for k in ("TXT", "SPF"):
                        if k in record and record[k] != "NONE":
                            record[k] = raw(record[k] if isinstance(record[k], list) else [record[k]])
    json.dump({"version": VERSION, "docs": docs}, sys.stdout)


main()
