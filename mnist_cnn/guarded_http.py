"""The server's HTTP connections under hostile clients: uvicorn's protocol with deadlines and caps it lacks.

uvicorn 0.54 (its httptools protocol) closes a kept-alive connection left idle for `timeout_keep_alive`
seconds after a response, and that is all: a connection that never sends a byte, headers or a body
dribbled a byte at a time, and headers of any size are held for ever, each on a file descriptor, until
the process runs out of them and new clients get an empty reply. Its `limit_concurrency` answers 503
to new requests but still accepts and holds every connection; h11's `h11_max_incomplete_event_size`
caps headers on the slower h11 parser only. GuardedHttp adds, in each server process:

- a connection idle before its first request is closed after --keep-alive seconds too (uvicorn's own
  timer only starts after a response);
- a request's line and headers must arrive within --header-timeout seconds of its first byte, and its
  body within --body-timeout seconds of its headers; else 408 and the connection is closed;
- headers over --max-header-kb are 431 and the connection is closed: no more than that (and one read)
  is held, however much a client sends;
- a refused request's answer is followed by the end of the server's side of the connection, and what the
  client still sends is read and dropped for LINGER seconds before it is closed (nginx's lingering close):
  a client still sending gets the answer, not a reset that loses it;
- at most --max-connections open connections: a new one beyond closes the connection that has waited
  longest on its client (idle, or still sending its request); when every one is being answered, the
  new one gets 503.
"""
import functools
import json
import time
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

LINGER = 1.0  # seconds a refused connection is still read, what comes dropped, before it is closed


@dataclass(frozen=True)
class Limits:
    """What a server process allows its clients (the serve command's options)."""
    max_connections: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 16_000


def guarded_protocol(limits):
    """uvicorn's `http` setting: GuardedHttp with these limits (a partial, so that it pickles to the workers)."""
    return functools.partial(GuardedHttp, limits=limits)


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above: per connection, what part of a request is arriving
    (`reading`: "headers", "body" or None) under which deadline, and since when it has waited on its client."""

    def __init__(self, *args, limits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.reading = None
        self.deadline = None
        self.header_bytes = 0
        self.refused = False
        self.waiting_since = time.monotonic()

    def connection_made(self, transport):
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        if len(self.connections) > self.limits.max_connections:
            self.make_room()

    def connection_lost(self, exc):
        self.disarm()
        super().connection_lost(exc)

    def data_received(self, data):
        if self.ended():  # refused: what else it sends is not parsed
            return
        super().data_received(data)
        if self.reading == "headers":  # still incomplete: the cap holds however slowly or fast they come
            self.header_bytes += len(data)
            if self.header_bytes > self.limits.max_header_bytes:
                self.refuse(431, self.headers_too_large())

    def on_message_begin(self):
        super().on_message_begin()
        self.reading, self.header_bytes = "headers", 0
        self.arm(self.limits.header_timeout, f"the request line and headers took over {self.limits.header_timeout:g} "
                                             f"s to arrive: send them at once")

    def on_headers_complete(self):
        if self.ended():
            return
        if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > \
                self.limits.max_header_bytes:
            self.refuse(431, self.headers_too_large())
            return
        self.reading = "body"
        self.arm(self.limits.body_timeout, f"the request body took over {self.limits.body_timeout:g} s to arrive: "
                                           f"send it at once, or a smaller one")
        super().on_headers_complete()

    def on_body(self, body):
        if not self.ended():
            super().on_body(body)

    def on_message_complete(self):
        self.reading = None
        self.disarm()
        if not self.ended():
            super().on_message_complete()

    def on_response_complete(self):
        super().on_response_complete()
        self.waiting_since = time.monotonic()

    def ended(self):
        """Refused, or closing: nothing it sends is parsed any more."""
        return self.refused or self.transport.is_closing()

    def headers_too_large(self):
        return (f"the request line and headers are over the limit of {self.limits.max_header_bytes:,} bytes: send "
                f"fewer or smaller headers (cookies)")

    def arm(self, seconds, detail):
        """Refuse the request with 408 unless the part now arriving is complete within `seconds`."""
        self.disarm()
        self.deadline = self.loop.call_later(seconds, self.refuse, 408, detail)

    def disarm(self):
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def waits_on_client(self):
        """Idle, or its request still arriving, or refused: nothing of ours would be lost by closing it."""
        return self.refused or self.reading is not None or self.cycle is None or self.cycle.response_complete

    def make_room(self):
        """Over max_connections: close the open connection that has waited longest on its client, or refuse this
        one when every other is being answered."""
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(others) < self.limits.max_connections:
            return
        waiting = [c for c in others if isinstance(c, GuardedHttp) and c.waits_on_client()]
        if not waiting:
            self.refuse(503, f"the server is answering {len(others)} connections, its limit: try again shortly")
            return
        oldest = min(waiting, key=lambda connection: (not connection.refused, connection.waiting_since))
        if oldest.reading is None or oldest.refused:  # idle or answered: closed as an expired keep-alive one is
            oldest.transport.close()
        else:
            oldest.refuse(503, "too many connections: this one, the slowest to send its request, was closed")

    def refuse(self, status, detail):
        """Answer `status` with {"detail": ...} unless a response to this request is under way, and close: at once
        when the client has sent all it meant to, else after LINGER seconds of reading and dropping the rest."""
        self.disarm()
        if self.ended():
            return
        self.refused = True
        if self.reading == "body":  # its request has reached the app: answer unless the app has
            answer = self.cycle is not None and not self.cycle.response_started and not self.pipeline
        else:  # a new connection, or a request's headers arriving: answer once the previous response is complete
            answer = self.cycle is None or self.cycle.response_complete
        if answer:
            body = json.dumps({"detail": detail}).encode()
            self.transport.write(STATUS_LINE[status] + b"content-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (len(body), body))
        if self.reading is None or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)
