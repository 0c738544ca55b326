"""The start-up probe's encode-actor part runs and names its parts (the whole-run part is each
run's own start-up record, tested with the status lines)."""

import pytest

from e5tools.rehearsal.startup import encode_actor

pytestmark = pytest.mark.rehearsal


def test_the_encode_actor_start_is_measured_part_by_part():
    parts = encode_actor()
    assert set(parts) == {
        "import_torch_s",
        "import_job_modules_s",
        "construct_s",
        "setup_s",
        "of_which_transformers_model_class_import_s",
    }
    assert all(v >= 0 for v in parts.values()) and parts["setup_s"] > 0
