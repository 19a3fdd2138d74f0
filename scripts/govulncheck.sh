#!/usr/bin/env bash
# Go vulnerability scan with a database built from golang.org/x/vulndb
# (fetched through the module proxy: this machine cannot reach vuln.go.dev).
# Fails on any called vulnerability. The Makefile pins the Go toolchain
# (GOTOOLCHAIN) to the newest 1.26 patch release, so a standard-library
# finding means that pin needs raising; with GOTOOLCHAIN=local (an older
# machine Go) standard-library findings are reported but do not fail.
set -euo pipefail
cd "$(dirname "$0")/.."
VULNDB_VERSION=${VULNDB_VERSION:-v0.0.0-20261105234957-e22db6528018}
VULN_VERSION=${VULN_VERSION:-v1.9.0}
DB=.tools/vulndb-$VULNDB_VERSION

if [[ ! -f $DB/index/db.json ]]; then
	src=$(go mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
	mkdir -p "$DB.tmp"
	(cd "$src" && GOFLAGS=-mod=mod go run ./cmd/indexdb -vulns data/osv -out "$OLDPWD/$DB.tmp")
	rm -rf "$DB" && mv "$DB.tmp" "$DB"
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
go run "golang.org/x/vuln/cmd/govulncheck@$VULN_VERSION" -db "file://$PWD/$DB" -format json ./... >"$out" || true
python3 - "$out" <<'PY'
import json, sys
dec, text, i = json.JSONDecoder(), open(sys.argv[1]).read(), 0
osv, called = {}, {}
while i < len(text):
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    obj, i = dec.raw_decode(text, i)
    if "osv" in obj:
        osv[obj["osv"]["id"]] = obj["osv"].get("summary", "")
    f = obj.get("finding")
    if f and f.get("trace") and f["trace"][0].get("function"):  # called, not just imported
        called[f["osv"]] = (f["trace"][0].get("module", "?"), f.get("fixed_version", ""))
import os
strict_std = os.environ.get("GOTOOLCHAIN", "local") != "local"
bad = 0
for vid, (mod, fixed) in sorted(called.items()):
    std = mod == "stdlib"
    bad += (not std) or strict_std
    print(f"{'toolchain' if std else 'MODULE   '} {vid} {mod} fixed in {fixed or '?'}: {osv.get(vid, '')}")
print(f"govulncheck ({os.popen('go env GOVERSION').read().strip()}): {len(called)} called vulnerabilities, {bad} that fail the scan")
sys.exit(1 if bad else 0)
PY
