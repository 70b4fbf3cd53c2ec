#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (issue 14) one after another, each for FUZZ_SECONDS
# (default 120), at nice 19, and prints a line per target: executions, exec/s, corpus size and
# whether it crashed. Exits 1 if any target crashed (the input is in fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh                      # every target
#   scripts/fuzz.sh sdp_offer rtp        # some of them
#   FUZZ_SECONDS=600 scripts/fuzz.sh rtp
#   scripts/fuzz.sh --cmin [targets]     # fold what the runs found into fuzz/corpus/ and minimise
#
# Needs the nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). Builds are release with debug assertions (-a), so
# arithmetic overflow counts as a crash, with AddressSanitizer (cargo-fuzz's default; set
# FUZZ_SANITIZER=none for about twice the speed on safe code).
#
# New inputs go to fuzz/target/corpus/<target>/ (ignored by git), read together with the
# committed seeds in fuzz/corpus/<target>/, so a run leaves the working tree clean. `--cmin`
# copies them into fuzz/corpus/<target>/ and runs `cargo fuzz cmin` on it (a set cover of the
# edges: 100-400 files per target); commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${FUZZ_SECONDS:-120}
sanitizer=${FUZZ_SANITIZER:-address}
cmin=0
if [[ ${1:-} == --cmin ]]; then
    cmin=1
    shift
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^mixdown-fuzz$')
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

fuzz=(nice -n 19 cargo +nightly fuzz)
opts=(--debug-assertions --sanitizer "$sanitizer")

if [[ $cmin -eq 1 ]]; then
    for t in "${targets[@]}"; do
        if [[ -d fuzz/target/corpus/$t ]]; then
            cp -n fuzz/target/corpus/"$t"/* fuzz/corpus/"$t"/ 2>/dev/null || true
        fi
        # The smallest set of inputs that covers every edge the whole set covers (counters
        # and value profiles left out): a few hundred files per target, not thousands.
        "${fuzz[@]}" cmin "${opts[@]}" "$t" fuzz/corpus/"$t" -- -set_cover_merge=1 -use_counters=0
        echo "$t: $(find fuzz/corpus/"$t" -type f | wc -l) files, $(du -sh fuzz/corpus/"$t" | cut -f1)"
    done
    exit 0
fi

# One build of every target first, so the timed runs only fuzz.
"${fuzz[@]}" build "${opts[@]}"

mkdir -p fuzz/target/logs
failed=()
printf '%-12s %8s %14s %10s %8s  %s\n' target seconds executions exec/s corpus result
for t in "${targets[@]}"; do
    work=fuzz/target/corpus/$t
    log=fuzz/target/logs/$t.log
    mkdir -p "$work" fuzz/artifacts/"$t"
    start=$(date +%s)
    status=0
    "${fuzz[@]}" run "${opts[@]}" "$t" "$work" fuzz/corpus/"$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    # libFuzzer's own count of seconds (the build before it is left out), else the wall clock.
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    took=${took:-$(($(date +%s) - start))}
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "$work" fuzz/corpus/"$t" -type f | wc -l)
    if [[ $status -eq 0 ]]; then
        result="no crash"
    elif grep -q 'Test unit written to' "$log"; then
        result="CRASH: $(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log" | tail -1), log $log"
        failed+=("$t")
    else
        result="FAILED to run (exit $status, a build error?), log $log"
        failed+=("$t")
    fi
    printf '%-12s %8s %14s %10s %8s  %s\n' "$t" "$took" "${execs:-?}" "${rate:-?}" "$corpus" "$result"
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: crashes or failures in ${failed[*]}; reproduce with: cargo +nightly fuzz run ${opts[*]} <target> <artifact>" >&2
    exit 1
fi
