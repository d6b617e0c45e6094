"""guestfwd helper: qemu runs this once per guest connection to 10.0.2.100:80 (stdin/stdout are
the guest's TCP stream) and it relays to the test's mirror on 127.0.0.1:PORT."""
import os
import select
import socket
import sys

s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
fds = [0, s.fileno()]
while fds:
    r, _, _ = select.select(fds, [], [])
    if 0 in r:
        data = os.read(0, 65536)
        if data:
            s.sendall(data)
        else:
            s.shutdown(socket.SHUT_WR)
            fds.remove(0)
    if s.fileno() in r:
        data = s.recv(65536)
        if not data:
            break
        while data:
            data = data[os.write(1, data) :]
