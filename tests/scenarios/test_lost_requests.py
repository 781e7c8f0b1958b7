"""Issue 18's fourth bug: what a lost request or reply costs, under `shoal load`.

A request whose request or reply is lost costs the client one request timeout (AT's), a
reconnect and a resend. A resend that is lost again costs another such timeout, not a longer
one: a timeout says a message was lost, not that the server is slow, so nothing the client
learnt about the server's service time changed (Lustre resends with AT's timeout; early
replies, not longer timeouts, keep a slow request alive). The client used to double the
timeout at each loss of the same request, so three losses in a row cost 3 + 6.5 + 13 s.

The probe client's `statfs` to one OST is the request lost, twice in a row, by a fail point
on that OST's node: the load never sends a statfs, so the point hits the probe's request and
its resend and nothing else, while the load checks that the drops around it cost no data.
"""

from __future__ import annotations

import time

import pytest

from shoal.cluster.local import LocalCluster
from shoal.protocol.fail_loc import FAIL_SOME, Code
from tests.scenarios.harness import Load, Probe, assert_clean, params, set_fail

OSS_A = "nid00062"
OST = "scratch-OST0000"  # served by OSS_A
LOSSES = 2

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("code", [Code.DROP_REQ, Code.DROP_REP], ids=["request", "reply"])
def test_a_resend_lost_again_waits_no_longer_than_the_first_send(
        cl: LocalCluster, code: Code) -> None:
    load = Load(cl, clients=4, duration=6.0)
    probe = Probe()
    c = probe.client(cl)
    try:
        imp = next(i for i in c.osts.values() if i.target == OST)
        probe.run(imp.call("statfs", {}))  # connected, and AT has a sample
        assert imp.timeouts == 0
        set_fail(cl, OSS_A, loc=hex(FAIL_SOME | code), val=str(LOSSES), opc="statfs",
                 target=OST)
        probe.run(imp.call("statfs", {}))
        assert params(cl, OSS_A, "fail_hits") == {"fail_hits": str(LOSSES)}
        # the request (or its reply) and then its resend were lost: two timeouts...
        assert imp.timeouts == LOSSES
        # ...each as long as AT says a request takes, the resend's no longer than the first
        # (was twice as long: each loss doubled the next wait)
        first = imp.at.request_timeout(time.time())
        assert imp.at.longest_wait <= first * 1.2, (imp.at.longest_wait, first)
        text = c.get_param(f"osc.{OST}-osc-*.import").popitem()[1]
        assert f"timeouts: {LOSSES}" in text
        assert_clean(load.result())
    finally:
        probe.close(c)


def test_a_slow_request_is_kept_alive_by_early_replies_not_resent(cl: LocalCluster) -> None:
    """What the doubled timeouts stood in for: a request the server is still serving (here
    a sync waiting for a commit the replay barrier holds back for longer than the client's
    timeout) gets early replies, so the client waits for it instead of resending it."""
    probe = Probe()
    c = probe.client(cl)
    try:
        imp = next(i for i in c.osts.values() if i.target == OST)
        set_fail(cl, OSS_A, loc="0x720", target=OST)  # OST0000 stops committing
        probe.run(c.write_file("/slow", b"x" * 4096, stripe_count=1, stripe_offset=0))
        sync = probe.start(imp.sync())
        time.sleep(imp.at.request_timeout(time.time()) + 1.5)  # past the client's timeout
        set_fail(cl, OSS_A, loc="0")  # the barrier lifts: the commit, then the reply
        sync(30.0)
        assert imp.timeouts == 0, "the sync was resent while the server was serving it"
    finally:
        probe.close(c)
