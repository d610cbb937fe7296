"""The checked-in stubs match protos/ (regenerate with scripts/gen_protos.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_contract_field_names() -> None:
    from ranking.api.v1 import ranking_pb2 as pb

    fields = {
        m: {f.name for f in getattr(pb, m).DESCRIPTOR.fields}
        for m in ("RankRequest", "Candidate", "RankResponse", "RankedItem")
    }
    assert {"request_id", "user_id", "candidates", "context", "top_k", "feature_names"} <= fields[
        "RankRequest"
    ]
    assert {"id", "feature_values"} <= fields["Candidate"]
    assert {"items", "model_version", "degraded_reasons"} <= fields["RankResponse"]
    assert {"id", "score"} <= fields["RankedItem"]
    assert pb.DESCRIPTOR.package == "ranking.v1"
