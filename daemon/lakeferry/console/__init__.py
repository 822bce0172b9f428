"""The operator console: a web page served by the daemon (``console.listen``, 127.0.0.1:9466).

Overview, dead letters (filter, detail, dry-run then confirmed replay or purge), an event's
trace, and ``/healthz`` ``/readyz``. Why in the daemon and not a process of its own: health is
the daemon's own (its event loop answers, its stages started, its bus and sink breaker), the
overview is the live feed the daemon already builds each second, and the DLQ and trace read the
bus through the daemon's own client. See docs/design.md, "Console".

Modules: :mod:`.app` (routes and pages), :mod:`.auth` (token, session, CSRF),
:mod:`.health` (readiness), :mod:`.letters` (the DLQ as rows and filters), :mod:`.trace`
(where is event X), :mod:`.server` (hypercorn on trio, on sockets the supervisor bound).
"""
