"""kube.Kube's transport: what every request costs the operator (issue 22 item 4)."""

import json

import kubernetes

from checkpoint_operator import kube


def test_the_token_refresh_hook_runs_at_most_every_few_seconds_not_before_every_request(tmp_path, monkeypatch):
    """kubernetes' kubeconfig (and in-cluster) loader sets host, CA and token again before every
    request, and the host's setter reads the proxy environment: 3-5% of the operator's CPU in
    bench/scale.py. Throttled, the token is still sent, and refreshed once the interval is over."""
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "secret"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=config)
    assert config.refresh_api_key_hook is not None  # what the loader installs (else nothing to throttle)
    calls = []
    original = kubernetes.config.kube_config.KubeConfigLoader._set_config

    def counted(loader, client_configuration):  # the loader's hook: it runs _set_config, which installs it again
        calls.append(1)
        return original(loader, client_configuration)
    monkeypatch.setattr(kubernetes.config.kube_config.KubeConfigLoader, "_set_config", counted)
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=config)
    calls.clear()
    now = [100.0]
    kube.throttle_token_refresh(config, clock=lambda: now[0])
    headers = [config.get_api_key_with_prefix("BearerToken") for _ in range(100)]
    assert len(calls) == 1 and set(headers) == {"Bearer secret"}
    now[0] += kube.TOKEN_REFRESH_EVERY - 1
    config.get_api_key_with_prefix("BearerToken")
    assert len(calls) == 1
    now[0] += 1
    config.get_api_key_with_prefix("BearerToken")
    assert len(calls) == 2
    for _ in range(10):  # still throttled after the loader's hook installed itself again
        config.get_api_key_with_prefix("BearerToken")
    assert len(calls) == 2


def test_a_configuration_without_a_refresh_hook_is_left_as_it_is():
    config = kubernetes.client.Configuration(host="http://127.0.0.1:1")
    kube.throttle_token_refresh(config)
    assert config.refresh_api_key_hook is None
