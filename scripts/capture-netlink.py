#!/usr/bin/env python3
"""Prints the netlink messages a command (nft or ip) sends, one per line as
   TYPE FLAGS PAYLOAD-HEX (payload = everything after the 16-byte nlmsghdr),
inside a throwaway network namespace. Batch begin/end markers are skipped.
This is how the golden bytes in Tests/NetlinkTests were recorded (the tests cite the command).

Usage: scripts/capture-netlink.py 'setup commands, one per line (run with ip netns exec)' -- CMD ARGS...
"""
import os, re, subprocess, sys, tempfile

setup, cmd = sys.argv[1], sys.argv[3:]
ns = f"ptcap{os.getpid()}"
subprocess.run(["ip", "netns", "add", ns], check=True)
try:
    for line in filter(None, setup.split("\n")):
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", line], check=True)
    out = subprocess.run(["ip", "netns", "exec", ns, "strace", "-qq", "-e", "trace=sendmsg,sendto",
                          "-e", "write=all", "-s", "0"] + cmd, capture_output=True, text=True).stderr
    calls, cur = [], None
    for line in out.splitlines():
        if line.startswith(("sendmsg(", "sendto(")):
            cur = bytearray(); calls.append(cur)
        m = re.match(r"^ \| [0-9a-f]{5}  ((?:[0-9a-f]{2} {1,2})+)", line)
        if m and cur is not None:
            cur.extend(bytes.fromhex(m.group(1).replace(" ", "")))
    for data in calls:
        i = 0
        while i + 16 <= len(data):
            length = int.from_bytes(data[i:i+4], "little")
            typ = int.from_bytes(data[i+4:i+6], "little")
            flags = int.from_bytes(data[i+6:i+8], "little")
            if typ not in (0x10, 0x11) and length >= 16:
                print(f"{typ:#06x} {flags:#06x} {data[i+16:i+length].hex()}")
            i += (length + 3) & ~3
finally:
    subprocess.run(["ip", "netns", "del", ns])
