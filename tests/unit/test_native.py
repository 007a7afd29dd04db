"""native: logs of native sections are queued, then logged by flush_logs."""

import threading
import unittest

from cinder_rbd_incremental import locking, native


class DeferredLoggingTestCase(unittest.TestCase):
    def setUp(self):
        self.log = native.get_logger("cinder_rbd_incremental.test")
        native.flush_logs()

    def test_outside_a_section_logs_at_once(self):
        with self.assertLogs("cinder_rbd_incremental.test", "INFO") as logs:
            self.log.info("now %d", 1)
        self.assertEqual(["INFO:cinder_rbd_incremental.test:now 1"], logs.output)

    def test_a_section_queues_until_flushed(self):
        def work():
            with native.section():
                self.log.warning("from %s", "a native thread")
                try:
                    raise ValueError("boom")
                except ValueError:
                    self.log.exception("failed")

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        with self.assertLogs("cinder_rbd_incremental.test", "INFO") as logs:
            native.flush_logs()
        self.assertEqual("WARNING:cinder_rbd_incremental.test:from a native thread",
                         logs.output[0])
        self.assertIn("ValueError: boom", logs.output[1])  # the exception of then

    def test_run_native_marks_the_call(self):
        self.assertFalse(native.in_section())
        self.assertTrue(native.run_native(native.in_section))
        self.assertFalse(native.in_section())


class WaitForTestCase(unittest.TestCase):
    me = {"backup_id": "b1"}

    def test_acquired_after_some_tries(self):
        tries = iter([False, False, True])
        locking.wait_for(lambda: next(tries), lambda: "holder", "chain", self.me, 10)

    def test_timeout_names_holder_and_option(self):
        with self.assertRaises(locking.ChainBusy) as caught:
            locking.wait_for(lambda: False, lambda: "backup b0 (host h)", "chain", self.me, 0)
        self.assertIn("backup b0 (host h)", str(caught.exception))
        self.assertIn("chain_lock_timeout", str(caught.exception))

    def test_cancel_while_waiting(self):
        from cinder_rbd_incremental import engine
        with self.assertRaises(engine.Cancelled):
            locking.wait_for(lambda: False, lambda: "x", "chain", self.me, 60,
                             should_cancel=lambda: True)


class FileLockTestCase(unittest.TestCase):
    def test_second_holder_in_the_same_process_waits_then_fails(self):
        import os
        import tempfile
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, ".lock")
            first = locking.owner("first-backup")
            with locking.file_lock(path, "chain", first, 0):
                with self.assertRaises(locking.ChainBusy) as caught:
                    with locking.file_lock(path, "chain", locking.owner("second"), 0):
                        pass
                self.assertIn("first-backup", str(caught.exception))
            with locking.file_lock(path, "chain", locking.owner("second"), 0):
                pass  # released: the next one gets it
