"""The spool as a unit: append, read back, checkpoint, recover, rotate."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from rlm_wificore import spool as spool_mod
from rlm_wificore.errors import ConfigError
from rlm_wificore.spool import Spool


def drain(sp: Spool, batch: int = 7) -> list[bytes]:
    out = []
    while True:
        got, pos = sp.read_batch(batch)
        sp.commit(pos)
        if not got:
            return out
        out += got


class TestSpool:
    def test_append_then_read_in_order(self, tmp_path):
        """Records come back in the order they were appended, each once."""
        sp = Spool(tmp_path)
        recs = [f"record-{i}".encode() * (i % 5 + 1) for i in range(100)]
        for r in recs:
            sp.append(r)
        assert drain(sp) == recs
        assert not sp.has_pending()
        sp.close()

    def test_checkpoint_survives_reopen(self, tmp_path):
        """After a reopen only records past the checkpoint are read again."""
        sp = Spool(tmp_path)
        for i in range(10):
            sp.append(b"a%d" % i)
        got, pos = sp.read_batch(4)
        sp.commit(pos)
        sp.close()
        sp = Spool(tmp_path)
        sp.append(b"late")
        assert drain(sp) == [b"a%d" % i for i in range(4, 10)] + [b"late"]
        sp.close()

    def test_rotation_across_segments(self, tmp_path, monkeypatch):
        """Records spanning several segments are all read, and finished segments are deleted."""
        monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 4096)
        sp = Spool(tmp_path)
        recs = [os.urandom(100 + i % 300) for i in range(200)]
        for r in recs:
            sp.append(r)
        assert len(sp.segments()) > 5
        assert drain(sp, batch=13) == recs
        assert len(sp.segments()) == 1
        sp.close()

    def test_second_process_refused(self, tmp_path):
        """A spool directory in use is refused with the key named."""
        sp = Spool(tmp_path)
        with pytest.raises(ConfigError, match="spool_dir"):
            Spool(tmp_path)
        sp.close()

    def test_kill_9_keeps_appended_records(self, tmp_path):
        """Records appended by a process killed with SIGKILL are read by the next one."""
        def child(path):
            sp = Spool(path)
            for i in range(1000):
                sp.append(b"rec-%d" % i)
            os.kill(os.getpid(), signal.SIGKILL)
        p = multiprocessing.get_context("fork").Process(target=child, args=(str(tmp_path),))
        p.start()
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
        sp = Spool(tmp_path)
        assert drain(sp) == [b"rec-%d" % i for i in range(1000)]
        sp.close()
