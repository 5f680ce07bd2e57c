"""The wire: everything that touches bytes and sockets, and nothing above them.

Dialling (TCP, TLS, proxies, within one deadline: `dial`), the upgrade request and
its checks (`handshake`), RFC 6455's frame rules (`frames`), the buffered socket and
the read loop (`buffered`, `reader`), one connection attempt (`connection`), the
connection settings checked once (`options`), and the adapter over websocket-client's
internals (`wsclient`). It runs on each connection's reader thread
(``wsbridge-reader``); the sender thread writes through `Connection.send` under its
lock. It imports nothing from `wsbridge.runtime`, the facade or the CLI.
"""
