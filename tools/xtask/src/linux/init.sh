#!/bin/sh
# /init of the Linux guest's initramfs, built by `cargo xtask` (tools/xtask/src/linux/init.sh).
#
# Shows that a virtio-blk disk works by DMA (through the SMMU when the device tree has one):
# reads the start of /dev/vda and compares it with the copy the host put in this initramfs,
# writes a block of its own, drops the caches, reads it back. Prints exactly one line
# `GUEST VERDICT: PASS <details>` or `GUEST VERDICT: FAIL <reason>`, then powers off.
#
# The details say what the IOMMU did: `iommu=` (the IOMMUs in /sys/class/iommu, or none),
# `groups=` (entries of /sys/kernel/iommu_groups), `vda-group=` and `domain=` (the disk's group
# and its default domain type), and `iommu-maps=` / `iommu-unmaps=`: the hits of the kernel's
# `iommu:map` and `iommu:unmap` tracepoints during the I/O alone (`unknown` when the kernel has
# no tracefs or no such events).
# A watchdog ends the run with a FAIL verdict if any step hangs (guest.timeout=SECONDS on the
# kernel command line, default 60).
#
# /etc/guest/env (written by the host) sets DISK_MAGIC, HEAD_BLOCKS, WRITE_BLOCK and
# WRITE_BLOCKS (in 4 KiB blocks); /etc/guest/modules lists the modules to insmod, in order.

export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /tmp
. /etc/guest/env

say() { echo "guest: $*"; }
stage() { echo "$*" >/tmp/stage; }

# Powers off without syncing (a hung disk must not stop it), then by sysrq, then by panic
# (`panic=-1` reboots, which `-no-reboot` turns into an exit).
power_off() {
	poweroff -n -f
	echo o >/proc/sysrq-trigger
	sleep 5
	exit 1
}

finish() {
	echo "GUEST VERDICT: $*"
	power_off
}

fail() { finish FAIL "$*"; }

timeout=60
for word in $(cat /proc/cmdline); do
	case "$word" in
	guest.timeout=*) timeout="${word#guest.timeout=}" ;;
	esac
done
stage "starting"
(
	sleep "$timeout"
	echo "GUEST VERDICT: FAIL timeout: /init did not finish within $timeout s (stuck: $(cat /tmp/stage))"
	power_off
) &

release=$(uname -r)
say "kernel $release: $(cat /proc/version)"

if [ -d /sys/class/iommu ] && [ -n "$(ls /sys/class/iommu)" ]; then
	iommus=$(ls /sys/class/iommu | tr '\n' ' ')
	say "IOMMU devices: $iommus"
else
	iommus=""
	say "IOMMU devices: none"
fi
dmesg | grep -i smmu | while read -r line; do say "dmesg: $line"; done

stage "loading modules"
while read -r module; do
	[ -n "$module" ] || continue
	say "insmod $module"
	insmod "$module" || fail "insmod $module failed"
done </etc/guest/modules

stage "waiting for /dev/vda"
waited=0
while [ ! -b /dev/vda ]; do
	waited=$((waited + 1))
	[ "$waited" -le 100 ] || fail "no /dev/vda after 10 s (virtio-blk did not probe)"
	usleep 100000
done

device=$(readlink -f /sys/block/vda/device/..)
group=none
domain=none
if [ -e "$device/iommu_group" ]; then
	group=$(basename "$(readlink -f "$device/iommu_group")")
	domain=$(cat "/sys/kernel/iommu_groups/$group/type" 2>/dev/null || echo unknown)
fi
groups=0
for entry in /sys/kernel/iommu_groups/*; do
	[ -e "$entry" ] && groups=$((groups + 1))
done
say "/dev/vda is $(basename "$device"), IOMMU group $group, domain type $domain ($groups IOMMU groups)"

# The kernel's iommu:map and iommu:unmap tracepoints, in tracefs (mounted on its own, or under
# debugfs); none of this may fail the run: without them the counts are `unknown`.
tracing=""
find_tracing() {
	for dir in /sys/kernel/tracing /sys/kernel/debug/tracing; do
		if [ -e "$dir/events/iommu/map/enable" ] && [ -e "$dir/events/iommu/unmap/enable" ]; then
			tracing=$dir
			return 0
		fi
	done
	return 1
}
find_tracing ||
	{ mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null && find_tracing; } ||
	{ mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null && find_tracing; } ||
	say "no iommu:map/iommu:unmap tracepoints (no tracefs?): IOMMU maps and unmaps not counted"

# Starts counting: an empty trace buffer, both events on.
trace_iommu_start() {
	[ -n "$tracing" ] || return 0
	if echo 0 >"$tracing/tracing_on" &&
		echo >"$tracing/trace" &&
		echo 1 >"$tracing/events/iommu/map/enable" &&
		echo 1 >"$tracing/events/iommu/unmap/enable" &&
		echo 1 >"$tracing/tracing_on"; then
		say "counting iommu:map and iommu:unmap in $tracing"
	else
		say "cannot enable the iommu tracepoints in $tracing: IOMMU maps and unmaps not counted"
		tracing=""
	fi
}

# Stops counting and sets $maps and $unmaps (numbers, or `unknown`).
trace_iommu_stop() {
	maps=unknown
	unmaps=unknown
	[ -n "$tracing" ] || return 0
	echo 0 >"$tracing/tracing_on"
	echo 0 >"$tracing/events/iommu/map/enable"
	echo 0 >"$tracing/events/iommu/unmap/enable"
	cat "$tracing/trace" >/tmp/iommu-trace 2>/dev/null || return 0
	if grep -q "\[LOST " /tmp/iommu-trace; then
		say "the trace buffer lost events: IOMMU maps and unmaps not counted"
		return 0
	fi
	# Lines `<task>-<pid> [cpu] <flags> <time>: map: IOMMU: iova=...` (and `unmap: IOMMU:`).
	maps=$(grep -c " map: IOMMU: " /tmp/iommu-trace)
	unmaps=$(grep -c " unmap: IOMMU: " /tmp/iommu-trace)
	say "IOMMU during the I/O: $maps maps, $unmaps unmaps"
}

# A read that bypasses the page cache, so that it is a new DMA; plain when O_DIRECT is refused.
read_mode=direct
read_blocks() { # device output skip count
	dd if="$1" of="$2" bs=4096 skip="$3" count="$4" iflag=direct 2>/dev/null && return 0
	read_mode=cached
	dd if="$1" of="$2" bs=4096 skip="$3" count="$4" 2>/dev/null
}

trace_iommu_start
stage "reading the start of /dev/vda"
read_blocks /dev/vda /tmp/disk-start 0 "$HEAD_BLOCKS" || fail "reading /dev/vda failed"
read -r magic </tmp/disk-start
[ "$magic" = "$DISK_MAGIC" ] || fail "disk header is '$magic', not '$DISK_MAGIC'"
cmp -s /tmp/disk-start /etc/guest/disk-start ||
	fail "the first $((HEAD_BLOCKS * 4)) KiB of /dev/vda differ from the host's image ($(cmp /tmp/disk-start /etc/guest/disk-start 2>&1))"

stage "writing /dev/vda"
dd if=/dev/urandom of=/tmp/written bs=4096 count="$WRITE_BLOCKS" 2>/dev/null ||
	fail "cannot make a pattern from /dev/urandom"
dd if=/tmp/written of=/dev/vda bs=4096 seek="$WRITE_BLOCK" count="$WRITE_BLOCKS" conv=notrunc,fsync oflag=direct 2>/dev/null ||
	dd if=/tmp/written of=/dev/vda bs=4096 seek="$WRITE_BLOCK" count="$WRITE_BLOCKS" conv=notrunc,fsync 2>/dev/null ||
	fail "writing /dev/vda failed"
stage "syncing /dev/vda"
sync
echo 3 >/proc/sys/vm/drop_caches

stage "reading back from /dev/vda"
read_blocks /dev/vda /tmp/read-back "$WRITE_BLOCK" "$WRITE_BLOCKS" || fail "reading back /dev/vda failed"
cmp -s /tmp/written /tmp/read-back ||
	fail "the $((WRITE_BLOCKS * 4)) KiB written at block $WRITE_BLOCK read back different ($(cmp /tmp/written /tmp/read-back 2>&1))"
trace_iommu_stop
sum=$(md5sum </tmp/written | cut -c1-8)

iommu=none
[ -n "$iommus" ] && iommu=$(echo $iommus | tr ' ' ',')
stage "done"
finish PASS "kernel=$release iommu=$iommu groups=$groups vda-group=$group domain=$domain iommu-maps=$maps iommu-unmaps=$unmaps read=$((HEAD_BLOCKS * 4))KiB-$read_mode write+readback=$((WRITE_BLOCKS * 4))KiB@block$WRITE_BLOCK md5=$sum"
