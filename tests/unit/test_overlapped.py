"""driver.Overlapped: work on a second native thread, its result or error handed back."""

import threading
import unittest

from cinder_rbd_incremental import driver


class OverlappedTestCase(unittest.TestCase):
    def test_value_after_wait(self):
        work = driver.Overlapped(lambda a, b: a + b, 2, 3)
        work.start()
        self.assertIsNone(work.wait())
        self.assertEqual(5, work.value)

    def test_the_error_is_returned_not_raised(self):
        def fail():
            raise RuntimeError("injected")

        work = driver.Overlapped(fail)
        work.start()
        error = work.wait()
        self.assertIsInstance(error, RuntimeError)
        self.assertIsNone(work.value)

    def test_runs_beside_the_caller(self):
        started, release = threading.Event(), threading.Event()

        def blocked():
            started.set()
            return release.wait(10)

        work = driver.Overlapped(blocked)
        work.start()
        self.assertTrue(started.wait(10))  # the caller goes on meanwhile
        release.set()
        self.assertIsNone(work.wait())
        self.assertTrue(work.value)

    def test_never_started(self):
        work = driver.Overlapped(lambda: 1 / 0)
        self.assertFalse(work.started)
        self.assertIsNone(work.wait())
        self.assertIsNone(work.value)
