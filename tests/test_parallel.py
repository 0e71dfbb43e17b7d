"""Parallel tests on 8 fake CPU devices: mesh and rule errors, param shardings follow the rules,
sharded == unsharded (logits, gradients, greedy samples), batch / cache / state shardings, XLA:CPU's
thread pool sized for the fake devices (no collective deadlock), and a 2-process CPU run."""

import functools
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from adaptive_rl import models, parallel, sampling

_RULES = parallel.DEFAULT_RULES
_MESHES = {  # (data, fsdp, tensor, sequence)
    "data8": (8, 1, 1, 1),
    "dp2_fsdp2_tp2": (2, 2, 2, 1),
    "tp8": (1, 1, 8, 1),  # 4 heads / 2 kv heads do not divide 8: replicated (fallback)
    "fsdp2_tp2_sp2": (1, 2, 2, 2),
}


def _mesh(shape):
  return parallel.make_mesh(parallel.MeshConfig(*shape))


@pytest.fixture(scope="module")
def model():
  cfg = models.get_preset("nano", vocab_size=32, num_heads=4, num_kv_heads=2, max_seq_len=48)
  params = jax.jit(functools.partial(models.init, cfg, init_std=0.2))(jax.random.key(0))
  return cfg, params


@pytest.fixture(scope="module")
def reference_logits(model):
  cfg, params = model
  return jax.jit(functools.partial(models.apply, cfg))(params, _tokens(cfg.vocab_size))[0]


def _sharded_params(cfg, mesh):
  return parallel.sharded_init(functools.partial(models.init, cfg, init_std=0.2), mesh,
                               models.param_axes(cfg), jax.random.key(0), rules=_RULES)


def _place(cfg, params, mesh):
  """Params on the mesh per the rules (sharded_init itself is tested once, below)."""
  return jax.device_put(params, parallel.param_shardings(mesh, models.param_axes(cfg), _RULES,
                                                         params))


def _assert_close(actual, expected, rtol=1e-5):
  """Equal to float32 round-off: |a - e| <= rtol * (|e| + max |e|).

  Sharded programs sum in a different order (and XLA tiles per-device shapes differently), so
  elements near zero differ by round-off of the array's scale, not their own.
  """
  actual, expected = np.asarray(actual), np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def _tokens(vocab, b=8, t=16, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, size=(b, t)).astype(np.int32)


# --- mesh and rules -------------------------------------------------------------------------


def test_mesh_config_errors_name_fields_and_counts():
  with pytest.raises(ValueError, match=r"mesh.data=2 x mesh.fsdp=2 x mesh.tensor=2 x "
                                       r"mesh.sequence=1 = 8 != 4 devices"):
    parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:4])
  with pytest.raises(ValueError, match=r"at most one mesh axis may be -1.*'data', 'tensor'"):
    parallel.MeshConfig(data=-1, tensor=-1)
  with pytest.raises(ValueError, match=r"mesh.fsdp must be a positive int or -1"):
    parallel.MeshConfig(fsdp=0)
  with pytest.raises(ValueError, match=r"multiply to 3, which does not divide 8 devices"):
    parallel.make_mesh(parallel.MeshConfig(data=-1, tensor=3))


def test_make_mesh_resolves_rest_axis():
  mesh = parallel.make_mesh(parallel.MeshConfig(data=-1, tensor=2))
  assert mesh.axis_names == parallel.MESH_AXES
  assert dict(mesh.shape) == dict(data=4, fsdp=1, tensor=2, sequence=1)
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  assert parallel.MeshConfig(data=1, fsdp=-1).shape(8) == (1, 8, 1, 1)


def test_rule_errors_name_the_axis(model):
  cfg, params = model
  no_kv = [r for r in _RULES if r[0] != "kv_heads"]
  with pytest.raises(ValueError, match=r"logical axis 'kv_heads' has no rule"):
    parallel.validate_rules(no_kv, models.param_axes(cfg))
  mesh = _mesh((2, 2, 2, 1))
  with pytest.raises(ValueError, match=r"logical_axis_rules\['mlp'\] names mesh axis 'model'"):
    parallel.validate_rules([r if r[0] != "mlp" else ("mlp", "model") for r in _RULES],
                            mesh=mesh)
  with pytest.raises(ValueError, match=r"'embed' has more than one rule"):
    parallel.validate_rules(list(_RULES) + [("embed", None)])
  # An activation axis without a rule fails when the model is traced under the rules.
  no_mlp = [r for r in _RULES if r[0] != "mlp"]
  with parallel.axis_rules(mesh, no_mlp), pytest.raises(ValueError, match=r"'mlp' has no rule"):
    jax.eval_shape(functools.partial(models.apply, cfg), params, _tokens(cfg.vocab_size))
  # ConfigDict-style lists normalise to the same hashable rules.
  as_lists = [[k, list(v) if isinstance(v, tuple) else v] for k, v in _RULES]
  assert parallel.validate_rules(as_lists, models.param_axes(cfg), mesh) == _RULES


# --- shardings ------------------------------------------------------------------------------


def test_sharded_init_follows_rules_and_matches_unsharded(model):
  cfg, params = model
  sharded = _sharded_params(cfg, _mesh((2, 2, 2, 1)))
  specs = jax.tree.map(lambda x: x.sharding.spec, sharded)
  assert specs["layers"]["wq"] == P(None, "fsdp", "tensor", None)
  assert specs["layers"]["wk"] == P(None, "fsdp", "tensor", None)
  assert specs["layers"]["wo"] == P(None, "tensor", None, "fsdp")
  assert specs["layers"]["w_down"] == P(None, "tensor", "fsdp")
  assert specs["layers"]["attn_norm"] == P(None, "fsdp")
  assert specs["embed"] == P("tensor", "fsdp")
  # Each device holds 1/4 of wq (fsdp x tensor), not a full copy.
  wq = sharded["layers"]["wq"]
  assert wq.addressable_shards[0].data.shape == (2, 32, 2, 16)
  jax.tree.map(functools.partial(_assert_close, rtol=1e-6), sharded, params)


def test_non_dividing_axis_falls_back_to_replication(model):
  cfg, params = model
  specs = jax.tree.map(lambda x: x.sharding.spec, _place(cfg, params, _mesh((1, 1, 8, 1))))
  assert specs["layers"]["wq"] == P(None, "fsdp", None, None)  # 4 heads on tensor=8
  assert specs["layers"]["wk"] == P(None, "fsdp", None, None)  # 2 kv heads on tensor=8
  assert specs["layers"]["w_up"] == P(None, "fsdp", "tensor")  # 192 mlp on tensor=8
  # Several mesh axes on one dimension keep the prefix that divides it.
  mesh = _mesh((2, 2, 2, 1))
  assert parallel.named_sharding(mesh, ("batch",), _RULES, (6,)).spec == P("data")
  assert parallel.named_sharding(mesh, ("batch",), _RULES, (8,)).spec == P(("data", "fsdp"))


def test_batch_cache_and_state_shardings(model):
  cfg, params = model
  mesh = _mesh((2, 2, 2, 1))
  assert parallel.data_sharding(mesh).spec == P(("data", "fsdp"))
  batch = parallel.shard_batch(mesh, {"tokens": _tokens(cfg.vocab_size), "odd": np.ones((3, 2)),
                                      "scalar": np.float32(1.0)})
  assert batch["tokens"].sharding.spec == P(("data", "fsdp"), None)
  assert batch["tokens"].addressable_shards[0].data.shape == (2, 16)
  assert batch["odd"].sharding.spec == P(None, None)  # 3 rows: replicated
  np.testing.assert_array_equal(np.asarray(batch["tokens"]), _tokens(cfg.vocab_size))

  cache = jax.eval_shape(lambda: models.init_cache(cfg, 8, 24))
  cs = parallel.kv_cache_shardings(mesh, cache, _RULES)
  assert cs.k.spec == P(None, ("data", "fsdp"), "tensor", None, None)
  assert cs.valid.spec == P(("data", "fsdp"), None) and cs.index.spec == P()

  ps = parallel.param_shardings(mesh, models.param_axes(cfg), _RULES, params)
  opt_state = jax.eval_shape(optax.adamw(1e-3).init, params)
  ss = parallel.state_shardings(opt_state, params, ps, mesh)
  assert ss[0].mu["layers"]["wq"] == ps["layers"]["wq"]
  assert ss[0].nu["embed"] == ps["embed"]
  assert ss[0].count.spec == P()
  state = parallel.sharded_init(optax.adamw(1e-3).init, mesh, lambda _: ss, params)
  assert state[0].mu["layers"]["w_up"].sharding.spec == P(None, "fsdp", "tensor")


# --- sharded == unsharded -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_MESHES))
def test_logits_sharded_equal_unsharded(model, reference_logits, name):
  cfg, params = model
  tokens = _tokens(cfg.vocab_size)
  mesh = _mesh(_MESHES[name])
  sharded = _place(cfg, params, mesh)
  with parallel.axis_rules(mesh, _RULES):
    logits, _ = jax.jit(functools.partial(models.apply, cfg))(
        sharded, parallel.shard_batch(mesh, tokens, _RULES))
  _assert_close(logits, reference_logits)


def _loss(cfg, params, tokens):
  logits, _ = models.apply(cfg, params, tokens[:, :-1])
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def test_grads_sharded_equal_unsharded(model):
  cfg, params = model
  tokens = _tokens(cfg.vocab_size, t=17)
  grad_fn = jax.grad(functools.partial(_loss, cfg))
  expected = jax.jit(grad_fn)(params, tokens)
  mesh = _mesh(_MESHES["fsdp2_tp2_sp2"])
  sharded = _place(cfg, params, mesh)
  ps = jax.tree.map(lambda x: x.sharding, sharded)
  with parallel.axis_rules(mesh, _RULES):
    grads = jax.jit(grad_fn, out_shardings=ps)(sharded, parallel.shard_batch(mesh, tokens))
  assert grads["layers"]["wq"].sharding.spec == ps["layers"]["wq"].spec
  # Gradients sum over the batch and across devices' partial sums: a looser round-off bound.
  jax.tree.map(functools.partial(_assert_close, rtol=5e-5), grads, expected)


def test_greedy_sampling_sharded_equals_unsharded(model):
  cfg, params = model
  prompts = [list(range(3, 3 + n)) for n in (5, 2, 7, 3, 6, 1, 4, 7)]
  toks, lens = sampling.left_pad(prompts, pad_id=0)
  scfg = sampling.SamplerConfig(max_new_tokens=8, eos_ids=(999,), strategy=sampling.Greedy())
  fn = functools.partial(sampling.sample, cfg, scfg)
  expected = jax.jit(fn)(params, toks, lens, jax.random.key(0))
  mesh = _mesh((2, 2, 2, 1))
  sharded = _place(cfg, params, mesh)
  with parallel.axis_rules(mesh, _RULES):
    out = jax.jit(fn)(sharded, *parallel.shard_batch(mesh, (toks, lens)), jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(expected.tokens))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(expected.logprobs),
                             rtol=1e-4, atol=1e-5)


# --- XLA:CPU runtime threads ---------------------------------------------------------------


def test_fake_cpu_device_count_reads_the_environment():
  count = parallel.fake_cpu_device_count
  assert count({}) == 1
  assert count({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}) == 8
  assert count({"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_dump_to=/tmp "
                             "--xla_force_host_platform_device_count=4"}) == 4  # last wins
  assert count({"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                "JAX_NUM_CPU_DEVICES": "2"}) == 2  # JAX's own setting overrides the flag


def test_collective_threads_are_twice_the_fake_devices():
  eight = "--xla_force_host_platform_device_count=8"
  env = {"XLA_FLAGS": eight, "NPROC": "2"}  # XLA's default pool: 8 threads on 2 cores
  assert parallel.ensure_collective_threads(env) == 16 and env["PJRT_NPROC"] == "16"
  env = {"XLA_FLAGS": eight, "NPROC": "2", "PJRT_NPROC": "12"}  # the user's choice stands
  assert parallel.ensure_collective_threads(env) is None and env["PJRT_NPROC"] == "12"
  env = {"XLA_FLAGS": eight, "NPROC": "32"}  # enough cores: XLA's default is left alone
  assert parallel.ensure_collective_threads(env) is None and "PJRT_NPROC" not in env
  env = {"NPROC": "1"}  # one device: no collectives
  assert parallel.ensure_collective_threads(env) is None and "PJRT_NPROC" not in env


_ASYNC_COLLECTIVES = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["NPROC"] = "2"  # XLA's default pool as on a 2-core machine, on any machine
    os.environ.pop("PJRT_NPROC", None)
    from adaptive_rl import parallel  # before JAX's first computation, as every entry point
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    print("PJRT_NPROC", os.environ.get("PJRT_NPROC"), flush=True)
    mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=2, tensor=2))
    x = jax.device_put(jnp.ones((64, 64)), parallel.data_sharding(mesh))
    w = jax.device_put(jnp.ones((64, 64)), parallel.replicated(mesh))
    # A data-parallel "step": the batch split over data x fsdp, its sum all-reduced.
    step = jax.jit(lambda w, x: (w + 1e-3 * jnp.tanh(x @ w).mean(), (x @ w).sum()),
                   out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                   donate_argnums=0)
    for _ in range(1000):  # dispatched asynchronously, far more than 32 steps ahead
      w, loss = step(w, x)
    print("DONE", float(loss), flush=True)
""")


def test_async_collective_loop_on_more_fake_devices_than_cores_finishes(tmp_path):
  """8 fake devices on (what XLA takes for) 2 cores: 1000 asynchronously dispatched all-reduce
  steps. With XLA:CPU's default pool of max(cores, devices) threads, launches parked on the
  32-deep in-flight semaphore starve the running collective of threads, and XLA aborts after 40 s
  ("Expected 8 threads to join the rendezvous, but only 6 of them arrived")."""
  script = tmp_path / "collectives.py"
  script.write_text(_ASYNC_COLLECTIVES)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
  out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "PJRT_NPROC 16" in out.stdout and "DONE" in out.stdout, out.stdout


# --- multi-process --------------------------------------------------------------------------

_WORKER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import numpy as np
    import jax
    from adaptive_rl import parallel
    port, pid = sys.argv[1], int(sys.argv[2])
    info = parallel.initialize_distributed(f"localhost:{port}", 2, pid)
    assert parallel.initialize_distributed(f"localhost:{port}", 2, pid) == info  # idempotent
    mesh = parallel.make_mesh(parallel.MeshConfig(data=-1))
    local = np.arange(4, dtype=np.float32).reshape(2, 2) + 10 * pid
    x = parallel.shard_batch(mesh, local)
    total = jax.jit(lambda a: a.sum(), out_shardings=parallel.replicated(mesh))(x)
    print("RESULT", info.process_index, info.process_count, jax.device_count(), x.shape,
          float(total), flush=True)
""")


def test_two_cpu_processes_form_one_mesh(tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  results = sorted(line for out, _ in outs for line in out.splitlines()
                   if line.startswith("RESULT"))
  # Global batch of 4 rows: 0..3 from process 0 and 10..13 from process 1, summed = 52.
  assert results == ["RESULT 0 2 4 (4, 2) 52.0", "RESULT 1 2 4 (4, 2) 52.0"]
