"""Drive the edgepatch VM test over the serial console (run by scripts/vm-test.sh).

usage: drive.py WORKDIR BUILDER

WORKDIR holds disk.img (ext4), btrfs.img (case d), vmlinuz, initrd.img, usb.img, keys/, the
c*.epb bundles and mirror/ (served on 127.0.0.1 to the guest as http://10.0.2.100/). Prints one line per case and exits 0 only when
every case passed. The serial console of each boot is kept in WORKDIR/serial-N.log.
"""
import functools
import http.server
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

W, BUILDER = sys.argv[1], sys.argv[2]
HERE = os.path.dirname(os.path.abspath(__file__))
DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


class Failed(Exception):
    pass


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass



def unwrap(status):
    """`edgepatch status` wraps lines over 80 columns under its 10-column labels: join them."""
    return re.sub(r"\n {10}(?=\S)", " ", status)

def serve_mirror():
    handler = functools.partial(Quiet, directory=f"{W}/mirror")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def publish(*bundles, expires="7d"):
    subprocess.run(
        [BUILDER, "publish", "--key", f"{W}/keys/edgepatch.key", "--out", f"{W}/mirror",
         "--index-expires-in", expires, *[f"{W}/{b}" for b in bundles]],
        check=True, stdout=subprocess.DEVNULL)


class VM:
    boots = 0

    def __init__(self, port, disk="disk.img", append=""):
        VM.boots += 1
        self.log = open(f"{W}/serial-{VM.boots}.log", "wb")
        self.buf = b""
        self.pos = 0
        self.lock = threading.Condition()
        self.mon = f"{W}/monitor.sock"
        if os.path.exists(self.mon):
            os.unlink(self.mon)
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "2",
            "-display", "none", "-vga", "none", "-serial", "stdio",
            "-monitor", f"unix:{self.mon},server=on,wait=off",
            "-kernel", f"{W}/vmlinuz", "-initrd", f"{W}/initrd.img",
            "-append", "root=/dev/vda rw console=ttyS0,115200 quiet loglevel=1 "
                       f"systemd.show_status=0 net.ifnames=0 {append}".strip(),
            "-drive", f"file={W}/{disk},if=virtio,format=raw",
            "-nic", f"user,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:python3 {HERE}/relay.py {port}",
            "-device", "qemu-xhci,id=xhci",
        ]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            b = self.p.stdout.read1(4096)
            if not b:
                break
            self.log.write(b)
            self.log.flush()
            with self.lock:
                self.buf += b
                self.lock.notify_all()

    def expect(self, pattern, timeout):
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.S)
        end = time.time() + timeout
        with self.lock:
            while True:
                m = rx.search(self.buf, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                left = end - time.time()
                if left <= 0 or self.p.poll() is not None:
                    tail = self.buf[-300:].decode(errors="replace").replace("\r", "")
                    raise Failed(f"timeout waiting for {pattern!r}; console ends: {tail!r}")
                self.lock.wait(min(left, 1))

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def login(self, timeout=600):
        self.expect(r"root@edgepatch-vm:~# ", timeout)
        self.send("stty -echo cols 80 rows 24; export TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0\n")
        self.sh("true")

    def sh(self, cmd, timeout=300):
        """Run cmd in the guest shell; returns (exit code, output without \\r)."""
        t = secrets.token_hex(4)
        self.send(f"echo {t}''B; {cmd}; echo {t}''E$?\n")
        m = self.expect(rf"{t}B\r?\n(.*?){t}E(\d+)", timeout)
        return int(m.group(2)), m.group(1).decode(errors="replace").replace("\r", "")

    def monitor(self, line):
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.mon)
        s.sendall(line.encode() + b"\n")
        time.sleep(1)
        s.close()

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def poweroff(self):
        self.send("systemctl poweroff\n")
        try:
            self.p.wait(180)
        except subprocess.TimeoutExpired:
            self.kill()


results = []


def case(name):
    def wrap(fn):
        def run(*a):
            t0 = time.time()
            try:
                fn(*a)
                line = f"vm: {name} ok ({time.time() - t0:.0f} s)"
                results.append(True)
            except Failed as e:
                line = f"vm: {name} FAILED: {e}"
                results.append(False)
            print(line, flush=True)
        return run
    return wrap


def service(vm, want_status, want_result):
    vm.sh("systemctl reset-failed edgepatch.service 2>/dev/null")
    vm.sh("systemctl start edgepatch.service", timeout=600)
    _, out = vm.sh("systemctl show -p Result -p ExecMainStatus edgepatch.service")
    got = dict(l.split("=", 1) for l in out.split() if "=" in l)
    if got.get("ExecMainStatus") != str(want_status) or got.get("Result") != want_result:
        _, j = vm.sh("journalctl -u edgepatch.service -n 5 --no-pager -o cat")
        raise Failed(f"want exit {want_status} result {want_result}, got {got}; {j.strip()[-300:]}")


def version(vm):
    return vm.sh("dpkg-query -W -f='${Version} ${db:Status-Abbrev}' kiosk-app 2>&1")[1].strip()


@case("a service-run-0-4-5-2")
def case_a(vm):
    _, en = vm.sh("systemctl is-enabled edgepatch.timer edgepatch-recover.service")
    if en.split() != ["enabled", "enabled"]:
        raise Failed(f"timer/recovery unit not enabled: {en!r}")
    service(vm, 5, "success")            # empty mirror: deferred
    publish("c1.epb")
    service(vm, 0, "success")            # fetch + apply c1
    if version(vm) != "1.0 ii":
        raise Failed(f"kiosk-app after c1: {version(vm)!r}")
    publish("c1.epb", expires="1s")      # a stale index: not applicable
    time.sleep(2)
    service(vm, 4, "success")
    publish("c1.epb", "c2.epb")          # c2 damaged on the mirror: integrity fails the unit
    with open(f"{W}/mirror/debian-12-amd64/bundles/2-c2.epb", "r+b") as f:
        f.seek(-50, 2)
        f.write(b"X")
    service(vm, 2, "exit-code")
    if version(vm) != "1.0 ii":
        raise Failed(f"kiosk-app after the damaged c2: {version(vm)!r}")


@case("b usb-stick-import-apply")
def case_b(vm):
    vm.monitor(f"drive_add 0 if=none,id=stick,file={W}/usb.img,format=raw,readonly=on")
    vm.monitor("device_add usb-storage,bus=xhci.0,drive=stick,id=stick0")
    end = time.time() + 300
    unit = "edgepatch-usb@sda.service"
    while True:
        _, st = vm.sh(f"systemctl show -p ActiveState -p Result -p ExecMainStatus {unit}")
        st = dict(l.split("=", 1) for l in st.split() if "=" in l)
        if st.get("ActiveState") in ("inactive", "failed") and version(vm) == "1.1 ii":
            break
        if time.time() > end:
            _, j = vm.sh("journalctl -u 'edgepatch-usb@*' -n 8 --no-pager -o cat")
            raise Failed(f"kiosk-app {version(vm)!r}, {unit} {st}; {j.strip()[-400:]}")
        time.sleep(3)
    if st.get("Result") != "success" or st.get("ExecMainStatus") != "0":
        raise Failed(f"{unit}: {st}")
    rc, _ = vm.sh("mountpoint -q /run/edgepatch/usb/sda")
    if rc == 0:
        raise Failed("stick still mounted at /run/edgepatch/usb/sda")
    vm.monitor("device_del stick0")


@case("c power-cut-recovery")
def case_c(box, port):
    """Cut the power while c3's postinst runs (dpkg half-way), boot again, check the result."""
    vm = box[0]
    publish("c3.epb")
    vm.sh("touch /var/lib/vmtest-pause; sync")
    vm.send("systemctl start --no-block edgepatch.service\n")
    vm.expect(r"VMTEST-IN-POSTINST", 600)
    time.sleep(1)
    vm.kill()
    t = time.time()
    vm = box[0] = VM(port)
    vm.login()
    print(f"vm: boot 2 after the power cut to a shell in {time.time() - t:.0f} s", flush=True)
    _, st = vm.sh("systemctl show -p Result -p ExecMainStatus edgepatch-recover.service")
    if "Result=success" not in st:
        raise Failed(f"edgepatch-recover.service: {st.split()}")
    rc, audit = vm.sh("dpkg --audit")
    if rc != 0 or audit.strip():
        raise Failed(f"dpkg --audit: rc {rc} {audit.strip()[:200]!r}")
    status = unwrap(vm.sh("edgepatch status")[1])
    v = version(vm)
    if "installed c3 seq 3" in status and v == "1.2 ii":
        which = "patched (c3)"
    elif "installed c2 seq 2" in status and v == "1.1 ii":
        which = "pre-patch (c2)"
    else:
        raise Failed(f"inconsistent: kiosk-app {v!r}, status {status.strip()!r}")
    if "step      idle" not in status or "last      recover ok" not in status:
        raise Failed(f"not resolved by the recovery unit at boot: {status!r}")
    print(f"vm: c recovered to {which}", flush=True)

MOUNTS = "for m in / /var/lib/edgepatch; do findmnt -n -o FSTYPE,FSROOT -M $m; done"


@case("d btrfs-root-rollback")
def case_d(box, port):
    """The btrfs node: c1 applied (snapshot auto -> btrfs), then c5, whose kiosk-app 1.3 fails its
    own self-test (the health check): exit 7, restore of / pending; after a reboot through the
    console the pre-patch root is the one running, and the agent's records (their own subvolume)
    say so."""
    t = time.time()
    vm = box[0] = VM(port, disk="btrfs.img", append="rootflags=subvol=@rootfs")
    vm.login()
    print(f"vm: boot {VM.boots} (btrfs root) to a shell in {time.time() - t:.0f} s", flush=True)
    _, mnt = vm.sh(MOUNTS)
    if mnt.split() != ["btrfs", "/@rootfs", "btrfs", "/@edgepatch"]:
        raise Failed(f"btrfs layout not as built: {mnt!r}")
    # A node of its own: the mirror starts again from c1 (publish keeps what it published).
    shutil.rmtree(f"{W}/mirror")
    os.mkdir(f"{W}/mirror")
    publish("c1.epb")
    service(vm, 0, "success")
    if version(vm) != "1.0 ii":
        raise Failed(f"kiosk-app after c1: {version(vm)!r}")
    _, st = vm.sh("edgepatch status --json")
    if '"snapshot":"btrfs:edgepatch-1-' not in st.replace(" ", ""):
        raise Failed(f"snapshot = auto did not take a btrfs snapshot for c1: {st[:300]!r}")
    publish("c1.epb", "c5.epb")
    service(vm, 7, "exit-code")
    status = unwrap(vm.sh("edgepatch status")[1])
    for want in ["last      apply health-failed (exit 7)", "kiosk-app-health exited 1",
                 "snapshot btrfs:edgepatch-5-", "REBOOT REQUIRED"]:
        if want not in status:
            raise Failed(f"status after the failed health check lacks {want!r}: {status!r}")
    # The restore takes effect at the reboot: until then the unhealthy version is what runs.
    if version(vm) != "1.3 ii":
        raise Failed(f"kiosk-app before the reboot: {version(vm)!r}")
    _, boot1 = vm.sh("cat /proc/sys/kernel/random/boot_id")
    t = time.time()
    vm.sh("systemctl reboot")
    vm.expect(r"edgepatch-vm ttyS0", 600)  # agetty's banner: the new boot's console
    vm.login()
    print(f"vm: d reboot to a shell in {time.time() - t:.0f} s", flush=True)
    _, boot2 = vm.sh("cat /proc/sys/kernel/random/boot_id")
    if boot2.strip() == boot1.strip():
        raise Failed("the guest did not reboot")
    v = version(vm)
    rc, _ = vm.sh("/usr/bin/kiosk-app-health")
    if v != "1.0 ii" or rc != 0:
        raise Failed(f"after the reboot kiosk-app is {v!r}, self-test exit {rc}")
    _, mnt = vm.sh(MOUNTS)
    if mnt.split() != ["btrfs", "/@rootfs", "btrfs", "/@edgepatch"]:
        raise Failed(f"mounts after the reboot: {mnt!r}")
    _, st = vm.sh("systemctl show -p Result -p ExecMainStatus edgepatch-recover.service")
    if "Result=success" not in st:
        raise Failed(f"edgepatch-recover.service: {st.split()}")
    rc, audit = vm.sh("dpkg --audit")
    if rc != 0 or audit.strip():
        raise Failed(f"dpkg --audit: rc {rc} {audit.strip()[:200]!r}")
    status = unwrap(vm.sh("edgepatch status")[1])
    for want in ["installed c1 seq 1", "step      idle", "last      recover ok (exit 0)",
                 "rollback of c5 took effect at boot: pre-patch versions back",
                 "kiosk-app=1.0 (btrfs:edgepatch-5-"]:
        if want not in status:
            raise Failed(f"status after the reboot lacks {want!r}: {status!r}")
    if "ATTENTION" in status or "REBOOT" in status:
        raise Failed(f"status after the reboot: {status!r}")
    # The replaced (post-patch) root was deleted once the node ran from the restored one.
    _, subs = vm.sh("btrfs subvolume list /")
    if ".replaced" in subs or "@rootfs" not in subs:
        raise Failed(f"subvolumes after the reboot: {subs!r}")
    # state_dir was not rewound: the node still refuses c5 (an agent whose records went back
    # with / would install it again and fail the health check again: exit 7).
    service(vm, 4, "success")
    if version(vm) != "1.0 ii":
        raise Failed(f"kiosk-app after the run following the reboot: {version(vm)!r}")


@case("e agent-self-update")
def case_e(vm):
    _, old = vm.sh("dpkg-query -W -f='${Version}' edgepatch")
    publish("c4.epb")
    service(vm, 0, "success")
    _, new = vm.sh("dpkg-query -W -f='${Version} ${db:Status-Abbrev}' edgepatch")
    if new.strip() != f"{old.strip()}+vmtest1 ii":
        raise Failed(f"edgepatch package {old!r} -> {new!r}")
    rc, out = vm.sh("edgepatch status")
    if rc != 0 or "installed c4 seq 4" not in out:
        raise Failed(f"status after the self-update: rc {rc} {out!r}")
    _, en = vm.sh("systemctl is-enabled edgepatch.timer edgepatch-recover.service")
    if en.split() != ["enabled", "enabled"]:
        raise Failed(f"units after the self-update: {en!r}")


@case("f console-80-columns")
def case_f(vm):
    for cmd in ["edgepatch status", "edgepatch doctor", "edgepatch keys"]:
        _, out = vm.sh(cmd)
        long = [l for l in out.splitlines() if len(l) > 80]
        if long:
            raise Failed(f"{cmd}: {len(long)} line(s) over 80 columns: {long[0]!r}")
        if "\x1b" in out:
            raise Failed(f"{cmd}: escape codes in the output")
        # keys: trusted_keys have no expiry, so no date to show there.
        if cmd != "edgepatch keys" and not DATE.search(out):
            raise Failed(f"{cmd}: no ISO-8601 date in {out!r}")
    # node_id = "" in agent.conf: the node is its (first-boot generated) machine-id.
    _, mid = vm.sh("cat /etc/machine-id")
    _, out = vm.sh("edgepatch status")
    if not re.fullmatch(r"[0-9a-f]{32}", mid.strip()) or f"node      {mid.strip()} " not in out:
        raise Failed(f"node id is not the machine-id {mid.strip()!r}: {out.splitlines()[:1]}")


def main():
    port = serve_mirror()
    t0 = time.time()
    vm = VM(port)
    try:
        vm.login()
        print(f"vm: boot 1 to a shell in {time.time() - t0:.0f} s", flush=True)
        case_a(vm)
        case_b(vm)
        case_f(vm)
        box = [vm]
        case_c(box, port)
        vm = box[0]
        if vm.p.poll() is None:
            case_e(vm)
        if vm.p.poll() is None:
            vm.poweroff()
        case_d(box, port)
        vm = box[0]
        if vm.p.poll() is None:
            vm.poweroff()
    except Failed as e:
        print(f"vm: FAILED: {e}", flush=True)
        results.append(False)
        vm.kill()
    finally:
        if vm.p.poll() is None:
            vm.kill()
        print(f"vm: total {time.time() - t0:.0f} s")


main()
sys.exit(0 if results and all(results) else 1)
