#!/usr/bin/env bash
# Reserve 2 MiB huge pages for a hugetlbfs segment and make sure a hugetlbfs mount exists.
# Usage: tools/reserve_hugepages.sh [--check] PAGES [MOUNT=/dev/hugepages]
#   --check   print what is reserved/free and exit 1 if fewer than PAGES are free
set -euo pipefail
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }
check=0
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then usage; exit 0; fi
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
pages=${1:?$(usage)}
mount_point=${2:-/dev/hugepages}
case "$pages" in (*[!0-9]*|'') echo "reserve_hugepages: PAGES must be a number" >&2; exit 2;; esac
sys=/sys/kernel/mm/hugepages/hugepages-2048kB
[ -d "$sys" ] || { echo "reserve_hugepages: this kernel has no 2 MiB huge pages" >&2; exit 2; }
before_total=$(cat "$sys/nr_hugepages"); before_free=$(cat "$sys/free_hugepages")
echo "before: nr_hugepages=$before_total free=$before_free"
if [ "$check" = 1 ]; then
    [ "$before_free" -ge "$pages" ] && exit 0
    echo "need $pages free; run: tools/reserve_hugepages.sh $pages" >&2; exit 1
fi
[ "$(id -u)" -eq 0 ] || { echo "reserve_hugepages: must run as root (writes vm.nr_hugepages)" >&2; exit 2; }
want=$((before_total - before_free + pages))
if [ "$want" -gt "$before_total" ]; then
    echo "$want" > "$sys/nr_hugepages"
fi
after_total=$(cat "$sys/nr_hugepages"); after_free=$(cat "$sys/free_hugepages")
echo "after:  nr_hugepages=$after_total free=$after_free"
if ! grep -qs " $mount_point hugetlbfs " /proc/mounts; then
    mkdir -p "$mount_point"
    mount -t hugetlbfs -o pagesize=2M none "$mount_point"
    echo "mounted hugetlbfs on $mount_point"
fi
if [ "$after_free" -lt "$pages" ]; then
    echo "reserve_hugepages: the kernel gave only $after_free free pages (memory fragmented?)" >&2
    exit 1
fi
