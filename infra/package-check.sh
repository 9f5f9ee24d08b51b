#!/usr/bin/env bash
# Checks what `sam build` produced: one bootstrap per function, each an
# aarch64 ELF executable (provided.al2023 on arm64). Prints each size.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=".aws-sam/build"
functions=(ApiFunction WorkerFunction SweeperFunction BatchTriggerFunction EventPublisherFunction)
status=0
printf '%-22s %12s  %s\n' function bytes check
for fn in "${functions[@]}"; do
  bin="$build_dir/$fn/bootstrap"
  if [ ! -f "$bin" ]; then
    printf '%-22s %12s  %s\n' "$fn" "-" "missing $bin"; status=1; continue
  fi
  # ELF magic, 64-bit class, and e_machine 0xB7 (EM_AARCH64) at offset 18, little endian.
  magic=$(od -An -tx1 -N4 "$bin" | tr -d ' \n')
  class=$(od -An -tu1 -j4 -N1 "$bin" | tr -d ' \n')
  machine=$(od -An -tu2 -j18 -N2 "$bin" | tr -d ' \n')
  size=$(stat -c %s "$bin")
  if [ "$magic" = "7f454c46" ] && [ "$class" = "2" ] && [ "$machine" = "183" ]; then
    printf '%-22s %12s  %s\n' "$fn" "$size" "aarch64 ELF"
  else
    printf '%-22s %12s  %s\n' "$fn" "$size" "NOT an aarch64 ELF (magic $magic, class $class, machine $machine)"; status=1
  fi
done
exit $status
