"""No litter in the sink: a killed daemon's temporary files are swept at its next start, and the
audit fails on temporary files and on files no inventory row names once nothing is in flight.

Found by three ``kill -9`` in 5,000 events: eight ``.<name>.lakeferry-tmp-<hex>`` files stayed
beside landed files, where lake readers saw them, and ``lakeferry audit`` stayed clean.
"""

from __future__ import annotations

import socket
from pathlib import Path

from helpers.daemon import DaemonEnv, origin_events
from helpers.origin import Origin
from helpers.wait import wait_until


def test_a_killed_daemons_temporary_files_are_swept_at_its_next_start(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    env.data["sink"].update({"link": False, "fsync": True})  # copies: puts take a while
    env.write()
    daemon = env.start()
    batch = env.submit_events(origin_events(origin, "litter", 150))
    wait_until(
        lambda: env.metric("lakeferry_stage_messages_total", stage="upload") >= 20,
        timeout=60,
        what="uploads under way",
    )
    daemon.kill()
    # What a put killed between creating its temporary file and renaming it leaves behind
    # (placed by hand as well, so that the test does not depend on where the kill fell).
    staging = Path(env.data["sink"]["root"]) / ".lakeferry-tmp" / f"{socket.gethostname()}.main"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "0123456789abcdef-litter-7.bin").write_bytes(b"half a file")
    _code, counts = env.audit(batch)
    assert counts["temp_files"] >= 1

    daemon = env.start()
    env.wait_settled(batch, landed=150, dead_lettered=0, timeout=120, what="every event to land")
    code, counts = env.audit(batch)
    assert (counts["temp_files"], counts["unrecorded_in_sink"]) == (0, 0)
    assert (counts["lost"], counts["duplicate_rows"], counts["missing_in_sink"]) == (0, 0, 0)
    assert code == 0
    assert list(staging.iterdir()) == []
    swept = [
        e
        for e in daemon.logs()
        if e.get("msg") == "removed temporary files left by an interrupted put"
    ]
    assert swept
    assert swept[0]["files"] >= 1
    assert daemon.terminate() == 0


def test_the_audit_fails_on_litter_once_nothing_is_in_flight(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    daemon = env.start()
    batch = env.submit_events(origin_events(origin, "clean", 5))
    env.wait_settled(batch, landed=5, dead_lettered=0, timeout=60, what="the events to land")
    assert env.audit(batch)[0] == 0
    sink = Path(env.data["sink"]["root"])
    (sink / "stray").mkdir()
    (sink / "stray" / "nobody.bin").write_bytes(b"landed for an event the inventory lacks")
    (sink / "clean-0" / ".clean-0.bin.lakeferry-tmp-62bf6ac28463").write_bytes(b"old naming")
    code, counts = env.audit(batch)
    assert (counts["unrecorded_in_sink"], counts["temp_files"], counts["in_flight"]) == (1, 1, 0)
    assert code == 1
    text = env.cli("audit")
    assert text.returncode == 1
    assert "stray/nobody.bin" in text.stdout
    assert "clean-0/.clean-0.bin.lakeferry-tmp-62bf6ac28463" in text.stdout
    assert daemon.terminate() == 0
