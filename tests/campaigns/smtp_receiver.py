"""A real SMTP server on 127.0.0.1 for the e-mail channel's tests: it speaks enough of RFC 5321
for smtplib, keeps what it accepts, and answers per recipient as a test tells it to
(`refuse@` -> 550, `greylist@` -> 451 at RCPT, `busy@` -> 451 after DATA)."""

from __future__ import annotations

import socketserver
import threading
from email import message_from_bytes
from email.message import Message


class _Handler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        server: SmtpReceiver = self.server.owner  # type: ignore[attr-defined]
        self.reply("220 test ESMTP")
        recipients: list[str] = []
        while line := self.rfile.readline():
            command = line.decode(errors="replace").strip()
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 test")
            elif verb == "MAIL":
                recipients = []
                self.reply("250 OK")
            elif verb == "RCPT":
                address = command.split(":", 1)[1].strip(" <>").lower()
                if address.startswith("refuse@"):
                    self.reply("550 no such user")
                elif address.startswith("greylist@"):
                    self.reply("451 try again later")
                else:
                    recipients.append(address)
                    self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with .")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                if any(r.startswith("busy@") for r in recipients):
                    self.reply("451 mailbox busy")
                else:
                    server.messages.append(message_from_bytes(data))
                    self.reply("250 queued")
            elif verb == "RSET":
                recipients = []
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


class SmtpReceiver:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]

    def __enter__(self) -> SmtpReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
