#!/bin/sh
# Regenerates the device-tree fixtures of the `board` tests. The tests need no tools: the
# compiled .dtb files are committed next to their sources. Needs qemu-system-aarch64 (10.0.2
# was used) and dtc. Run from this directory.
#
#   qemu-virt.dtb                real QEMU virt, two -serial, -append: the reference board
#   qemu-virt-one-uart.dtb       real QEMU virt, one -serial: no UART1 node
#   qemu-virt-no-smmu.dtb        real QEMU virt without iommu=smmuv3: no SMMU node, no iommu-map
#   qemu-virt-highmem-off.dtb    real QEMU virt, highmem=off: ECAM at 0x3f00_0000, 16 buses
#   qemu-virt-*.dts              hand edits of qemu-virt.dts (see the comment at their top),
#                                qemu-virt-platform-device among them
#   fvp-base-revc.dts            written from Linux's fvp-base-revc.dts + rtsm_ve-motherboard.dtsi
#
# QEMU's blobs differ from run to run only in /chosen's rng-seed and kaslr-seed. The hand
# edits are made from the committed qemu-virt.dts and are not rewritten here.
set -eu
kernel=$(mktemp)
trap 'rm -f "$kernel" raw.dtb' EXIT
head -c 64 /dev/zero > "$kernel"
qemu() {
    qemu-system-aarch64 -cpu max -m 1G -smp 2 -nographic -display none "$@" >/dev/null 2>&1
}
m=virt,virtualization=on,iommu=smmuv3,gic-version=3
# dumpdtb writes a 1 MiB padded blob; `dtc -I dtb -O dtb` packs it.
pack() { dtc -q -I dtb -O dtb -o "$1" raw.dtb; }
qemu -M $m,dumpdtb=raw.dtb -serial null -serial null -kernel "$kernel" \
    -append "console=ttyAMA0 earlycon" && pack qemu-virt.dtb
dtc -q -I dtb -O dts -o qemu-virt.dts qemu-virt.dtb
qemu -M $m,dumpdtb=raw.dtb -serial null && pack qemu-virt-one-uart.dtb
qemu -M virt,virtualization=on,gic-version=3,dumpdtb=raw.dtb -serial null -serial null \
    && pack qemu-virt-no-smmu.dtb
qemu -M $m,highmem=off,dumpdtb=raw.dtb -serial null -serial null && pack qemu-virt-highmem-off.dtb
for dts in qemu-virt-uart1-moved qemu-virt-no-memory qemu-virt-smmu-gerror-level \
    qemu-virt-platform-device fvp-base-revc \
    fvp-base-revc-psci-hvc; do
    dtc -q -I dts -O dtb -o "$dts.dtb" "$dts.dts"
done
