"""The wire: everything that touches bytes and sockets, and nothing above them.

Dialling (TCP, TLS, proxies, within one deadline: `dial`; which proxy, and the
HTTP CONNECT and SOCKS5 tunnels: `proxies`), the upgrade request and its checks
(`handshake`), RFC 6455's frame rules (`frames`), the buffered socket and the read
loop (`buffered`, `reader`), one connection attempt (`connection`), the connection
settings checked once and what each attempt sends (`options`), and the adapter over websocket-client's
internals (`wsclient`). It runs on each connection's reader thread
(``wsbridge-reader``); the sender thread writes through `Connection.send` under its
lock. It imports nothing from `wsbridge.runtime`, the facade or the CLI.
"""
