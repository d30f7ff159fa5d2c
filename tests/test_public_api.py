import subprocess
import sys

import mma_agent


def test_all_is_pinned():
    assert mma_agent.__all__ == [
        "Pipeline",
        "PipelineConfig",
        "RerankInput",
        "RerankOutput",
        "TASK_FAMILIES",
        "ToolSpec",
        "Toolkit",
        "create_mma_reranker",
        "create_rerank_tool",
        "load_dataset",
        "prepare_toolkits",
        "split_dataset",
    ]
    for name in mma_agent.__all__:
        assert getattr(mma_agent, name) is not None


def test_import_is_light():
    code = (
        "import sys, mma_agent, mma_agent.graphs, mma_agent.toolkits, mma_agent.training, mma_agent.evals; "
        "print(sorted(m for m in ('torch', 'pandas', 'transformers', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_unknown_attribute():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mma_agent.nope  # noqa: B018
