"""The quorum rule, the choice of perspectives and the settings behind them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from acme_ra import natsauth, perspectives
from acme_ra.config import Settings
from acme_ra_validator.mpic import Outcome, PerspectiveResult, choose, decide


def _results(*outcomes: tuple[str, str, Outcome]) -> list[PerspectiveResult]:
    return [PerspectiveResult(name, region, outcome, None if outcome == "valid" else {"type": "unauthorized",
                                                                                      "detail": "no"})
            for name, region, outcome in outcomes]


@pytest.mark.parametrize(("remote", "required", "regions"), [(0, 0, 1), (1, 1, 1), (2, 1, 2), (3, 2, 2), (5, 4, 2),
                                                               (6, 4, 2), (7, 5, 2)])
def test_br_table(remote: int, required: int, regions: int) -> None:
    settings = Settings(mpic_remote_perspectives=remote)
    assert (settings.mpic_required_passes, settings.mpic_min_regions) == (required, regions)


def test_quorum_override_and_regions() -> None:
    settings = Settings(mpic_remote_perspectives=3, mpic_quorum=3)
    assert (settings.mpic_required_passes, settings.mpic_min_regions) == (3, 1)
    assert Settings(mpic_remote_perspectives=3, mpic_regions_min=3).mpic_min_regions == 3
    with pytest.raises(ValidationError, match="MPIC_QUORUM"):
        Settings(mpic_remote_perspectives=2, mpic_quorum=3)


def test_remote_role_needs_a_name_and_a_region() -> None:
    with pytest.raises(ValidationError, match="PERSPECTIVE and _REGION"):
        Settings(validator_role="remote", validator_perspective="p1")
    with pytest.raises(ValidationError, match="REGION must be one of"):
        Settings(validator_role="remote", validator_perspective="p1", validator_region="europe")
    with pytest.raises(ValidationError, match="PERSPECTIVE"):
        Settings(validator_perspective="a.b")
    assert Settings(validator_role="remote", validator_perspective="p-1", validator_region="ripe")


def test_decide() -> None:
    assert decide(_results(("a", "arin", "valid"), ("b", "ripe", "valid")), 3, 2, 2).verdict == "valid"
    # One region only: not yet (one missing), then invalid once everyone answered.
    same = _results(("a", "arin", "valid"), ("b", "arin", "valid"))
    assert decide(same, 3, 2, 2).verdict == "undecided"
    assert decide([*same, *_results(("c", "ripe", "invalid"))], 3, 2, 2).verdict == "invalid"
    # Two disagree of three: decided at once.
    two = decide(_results(("a", "arin", "invalid"), ("b", "ripe", "invalid")), 3, 2, 2)
    assert (two.verdict, two.quorum, two.problem and two.problem["type"]) == ("invalid", "0/3", "unauthorized")
    # Unavailable ones never pass.
    gone = [PerspectiveResult("a", "arin", "unavailable"), PerspectiveResult("b", "ripe", "unavailable")]
    assert decide([*gone, *_results(("c", "apnic", "valid"))], 3, 2, 2).verdict == "undecided"


def test_choose_spreads_regions() -> None:
    live = {"a1": "arin", "a2": "arin", "a3": "arin", "r1": "ripe", "p1": "apnic"}
    for _ in range(20):
        chosen = choose(live, 3)
        assert len({name for name, _ in chosen}) == 3 and {region for _, region in chosen} == {"arin", "ripe", "apnic"}
    assert len(choose(live, 9)) == 5 and choose({}, 3) == []


def test_perspective_user_permissions() -> None:
    remote = natsauth.PERMISSIONS["perspective"]
    assert remote.publish == (perspectives.SUBJECT_HEARTBEATS, "_INBOX.validator.>") and remote.responds
    assert perspectives.SUBJECT_CHECKS in remote.subscribe
    validator = natsauth.PERMISSIONS["validator"]
    assert perspectives.SUBJECT_CHECKS in validator.publish and perspectives.SUBJECT_HEARTBEATS in validator.subscribe
    own = natsauth.perspective_permissions("p1")
    assert own.publish == ("acme.perspectives.heartbeat.p1", "_INBOX.validator.>") and "acme.perspectives.check.p1" in own.subscribe
