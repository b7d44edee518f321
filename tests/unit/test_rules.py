"""The PrometheusRule Tollway renders, checked by the real promtool (Debian's Prometheus): `promtool check
rules` on every rendered group, and `promtool test rules` with synthetic series proving that each alert
fires when it should and stays quiet when it should not."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway import documents
from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.render.autoscaling import (
    busy_expression,
    model_matchers,
    ttft_expression,
    waiting_p99_expression,
)
from tollway.render.monitoring import gateway_rule_groups, rule_groups
from tollway.translate import translate_all
from tollway.translate.serving import plan_serving

from builders import api_tier, model_deployment

ROOT = Path(__file__).resolve().parents[2]
SELECTOR = 'namespace="ai",model="chat"'
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: hack/setup installs Debian's prometheus"
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def rules_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    return rule_groups(plan_serving(parse(ModelDeployment, document), (1, 2, 3), "unused"))


def example_models() -> list[dict[str, Any]]:
    return [
        document for document in documents.load([ROOT / "examples"]) if document["kind"] == "ModelDeployment"
    ]


@pytest.mark.parametrize("document", example_models(), ids=lambda document: document["metadata"]["name"])
def test_promtool_accepts_every_rendered_rule_group(document: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rules_of(document)}))
    checked = promtool("check", "rules", "--lint-fatal", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_accepts_the_gateway_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": gateway_rule_groups(example_gateway())}))
    checked = promtool("check", "rules", "--lint-fatal", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def chat() -> dict[str, Any]:
    return model_deployment(
        "chat",
        **{
            "spec.versions": [
                {"version": "3"},
                {"version": "2", "deprecation": {"announced": "1970-01-01", "sunset": "1970-03-01"}},
                {"version": "1", "deprecation": {"announced": "2098-01-01", "sunset": "2099-01-01"}},
            ],
            "spec.aliases": {"latest": "3"},
            "spec.slo": {"availability": "99.9", "p99LatencyMs": 1000},
        },
    )


def alert(
    rules: list[dict[str, Any]], name: str, *, series: dict[str, str] | None = None, **labels: str
) -> dict[str, Any]:
    """The alert as promtool expects it: the rule's labels and annotations, and the series' labels (`series`;
    by default the model's)."""
    rule = next(
        rule
        for group in rules
        for rule in group["rules"]
        if rule.get("alert") == name
        and all(rule["labels"].get(key, value) == value for key, value in labels.items())
    )
    return {
        "exp_labels": {
            **({"namespace": "ai", "model": "chat"} if series is None else series),
            **rule["labels"],
            **labels,
        },
        "exp_annotations": rule["annotations"],
    }


def passes_promtool(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    """`promtool test rules` of `tests` against tmp_path/rules.yaml (written by the test)."""
    test_file = tmp_path / "test.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    tested = promtool("test", "rules", str(test_file))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def fires_in_every_window(rules: list[dict[str, Any]], name: str, eval_time: str) -> dict[str, Any]:
    """A promtool alert test: `name` fires for each burn rate's long window at `eval_time`."""
    return {
        "eval_time": eval_time,
        "alertname": name,
        "exp_alerts": [alert(rules, name, window=window) for window in ("1h", "6h", "1d", "3d")],
    }


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    matchers = ",".join([SELECTOR, *(f'{key}="{value}"' for key, value in labels.items())])
    return {"series": f"{name}{{{matchers}}}", "values": values}


def test_each_alert_fires_when_it_should_and_stays_quiet_when_it_should_not(tmp_path: Path) -> None:
    rules = rules_of(chat())
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}))
    ok = series("nv_inference_request_success", "0+100x300", version="3")
    failing = series("nv_inference_request_failure", "0+10x300", version="3", reason="BACKEND")
    fast = series("nv_inference_request_summary_us", "20000x300", version="3", quantile="0.99")
    slow = series("nv_inference_request_summary_us", "2000000x300", version="3", quantile="0.99")
    burn = "TollwayAvailabilityBudgetBurn"
    tests = [
        {  # 9 % errors against a 0.1 % budget: every window burns, pages first
            "interval": "1m",
            "input_series": [ok, failing, fast],
            "alert_rule_test": [
                {
                    "eval_time": "70m",
                    "alertname": burn,
                    "exp_alerts": [alert(rules, burn, window=window) for window in ("1h", "6h", "1d", "3d")],
                },
                {"eval_time": "70m", "alertname": "TollwayLatencySLOBurn", "exp_alerts": []},
            ],
        },
        {  # clean traffic within the latency objective: nothing fires
            "interval": "1m",
            "input_series": [ok, fast, series("nv_inference_request_success", "0+5x300", version="1")],
            "alert_rule_test": [
                {"eval_time": "200m", "alertname": name, "exp_alerts": []}
                for name in (burn, "TollwayLatencySLOBurn", "TollwayErrorSpike", "TollwaySunsetVersionInUse")
            ],
        },
        {  # P99 of 2 s against a 1 s objective over each long and short window (70 minutes is all there is)
            "interval": "1m",
            "input_series": [ok, slow],
            "alert_rule_test": [fires_in_every_window(rules, "TollwayLatencySLOBurn", "70m")],
        },
        {  # an hour clean, then half the requests fail: a spike against the hour before
            "interval": "1m",
            "input_series": [
                ok,
                fast,
                series("nv_inference_request_failure", "0x60 0+100x60", version="3", reason="X"),
            ],
            "alert_rule_test": [
                {"eval_time": "58m", "alertname": "TollwayErrorSpike", "exp_alerts": []},
                {
                    "eval_time": "68m",
                    "alertname": "TollwayErrorSpike",
                    "exp_alerts": [alert(rules, "TollwayErrorSpike")],
                },
            ],
        },
        {  # version 2 is within 90 days of its sunset and still called; version 1's sunset is far away
            "interval": "1m",
            "input_series": [
                ok,
                fast,
                series("nv_inference_request_success", "0+10x300", version="2"),
                series("nv_inference_request_success", "0+10x300", version="1"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "150m",
                    "alertname": "TollwaySunsetVersionInUse",
                    "exp_alerts": [alert(rules, "TollwaySunsetVersionInUse", version="2")],
                }
            ],
        },
    ]
    passes_promtool(tmp_path, tests)


def test_time_to_first_token_comes_from_the_gateway_else_triton_and_its_objective_alerts(
    tmp_path: Path,
) -> None:
    """The gateway's TTFT histogram (every Envoy replica's summed) gives the P99 per version and per tier;
    where it has measured no stream, Triton's first-response histogram does; above `ttftP99Ms` over both
    windows, TollwayTTFTSLOBurn fires."""
    document = chat()
    document["spec"]["slo"]["ttftP99Ms"] = 300
    rules = rules_of(document)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}))

    def buckets(metric: str, per_minute: dict[str, int], **labels: str) -> list[dict[str, str]]:
        """A histogram whose every observation, 60 a minute, falls in the bucket above the smallest `le`
        listed with a count (cumulative, as Prometheus's buckets are)."""
        return [
            series(f"{metric}_bucket", f"0+{count}x120", le=le, **labels) for le, count in per_minute.items()
        ]

    # 60 streams a minute on each of two replicas, all between 100 and 250 ms to their first token
    gateway = [
        row
        for replica in ("a", "b")
        for row in buckets(
            "envoy_tollway_stream_ttft_ms",
            {"100": 0, "250": 60, "+Inf": 60},
            version="3",
            tier="pro",
            pod=replica,
        )
    ]
    slow_triton = buckets(
        "nv_inference_first_response_histogram_ms", {"100": 0, "1000": 60, "+Inf": 60}, version="2"
    )
    tests = [
        {
            "interval": "1m",
            "input_series": [*gateway, *slow_triton],
            "promql_expr_test": [
                {
                    "expr": 'tollway:stream_ttft_ms_by_tier:p50{tier="pro"}',
                    "eval_time": "30m",
                    "exp_samples": [
                        {
                            "labels": "tollway:stream_ttft_ms_by_tier:p50"
                            '{namespace="ai",model="chat",version="3",tier="pro"}',
                            "value": 175,
                        }
                    ],
                },
                {  # version 3 from the gateway, version 2 (no streams through it) from Triton
                    "expr": "tollway:ttft_ms:p99",
                    "eval_time": "30m",
                    "exp_samples": [
                        {
                            "labels": 'tollway:ttft_ms:p99{namespace="ai",model="chat",version="3"}',
                            "value": 248.5,
                        },
                        {
                            "labels": 'tollway:ttft_ms:p99{namespace="ai",model="chat",version="2"}',
                            "value": 991,
                        },
                    ],
                },
            ],
            "alert_rule_test": [fires_in_every_window(rules, "TollwayTTFTSLOBurn", "100m")],
        },
        {  # within the objective: quiet
            "interval": "1m",
            "input_series": gateway,
            "alert_rule_test": [{"eval_time": "100m", "alertname": "TollwayTTFTSLOBurn", "exp_alerts": []}],
        },
    ]
    passes_promtool(tmp_path, tests)


def test_the_autoscalers_ttft_is_the_gateways_and_else_tritons(tmp_path: Path) -> None:
    """What the HPA (through prometheus-adapter) and KEDA scale on for `targets.ttftP99Ms`: the P99 of the
    gateway's TTFT histogram, summed over the Envoy replicas; where no stream went through the gateway,
    Triton's first-response histogram."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules_of(chat())}))

    def histogram(name: str, per_minute: dict[str, int], **labels: str) -> list[dict[str, str]]:
        return [
            series(f"{name}_bucket", f"0+{count}x10", le=le, **labels) for le, count in per_minute.items()
        ]

    gateway = [
        row
        for pod in ("a", "b")
        for row in histogram("envoy_tollway_stream_ttft_ms", {"200": 0, "300": 60, "+Inf": 60}, pod=pod)
    ]
    triton = histogram("nv_inference_first_response_histogram_ms", {"1000": 0, "2000": 60, "+Inf": 60})
    expected = {"gateway": 299, "triton": 1990}
    tests = [
        {
            "interval": "1m",
            "input_series": rows,
            "promql_expr_test": [
                {
                    "expr": ttft_expression(SELECTOR),
                    "eval_time": "5m",
                    "exp_samples": [{"labels": '{model="chat"}', "value": expected[source]}],
                }
            ],
        }
        for source, rows in (("gateway", gateway + triton), ("triton", triton))
    ]
    passes_promtool(tmp_path, tests)


def test_an_uncached_models_p99_for_the_autoscalers_is_tritons_request_summary_while_requests_wait(
    tmp_path: Path,
) -> None:
    """With nothing waiting the figure is 0: more replicas would not lower a latency no queue explains."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules_of(chat())}))
    request = series("nv_inference_request_summary_us", "20000x10", version="3", quantile="0.99")
    queue = series("nv_inference_queue_summary_us", "3000x10", version="3", quantile="0.99")
    # two pods: requests wait for the first five minutes only
    waiting = [series("nv_inference_pending_request_count", "1x5 0x5", version="3", pod=pod) for pod in "ab"]
    test = {
        "interval": "1m",
        "input_series": [request, queue, *waiting],
        "promql_expr_test": [
            {
                "expr": waiting_p99_expression(SELECTOR),
                "eval_time": eval_time,
                "exp_samples": [{"labels": '{model="chat"}', "value": value}],
            }
            for eval_time, value in (("4m", 20), ("8m", 0))
        ],
    }
    passes_promtool(tmp_path, [test])


def test_the_busy_time_for_the_autoscalers_counts_each_batch_once(tmp_path: Path) -> None:
    """Triton adds a batch's compute time to each request in it: per pod, 5 batches of 8 requests every
    15 s, each batch 1.5 s of compute, is half a replica busy; two such pods, one replica's worth."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules_of(chat())}))
    counters = {
        "nv_inference_request_success": "0+40x20",
        "nv_inference_exec_count": "0+5x20",
        "nv_inference_compute_infer_duration_us": "0+60000000x20",  # 40 requests x 1.5 s each
    }
    busy = [series(name, values, version="3", pod=pod) for name, values in counters.items() for pod in "ab"]
    # an idle model: counters that do not move read 0, not nothing
    idle = [
        {"series": f'{name}{{namespace="ai",model="idle",version="1",pod="c"}}', "values": "7x20"}
        for name in counters
    ]
    test = {
        "interval": "15s",
        "input_series": [*busy, *idle],
        "promql_expr_test": [
            {
                "expr": busy_expression(model_matchers("ai", model)),
                "eval_time": "4m",
                "exp_samples": [{"labels": f'{{model="{model}"}}', "value": value}],
            }
            for model, value in (("chat", 1), ("idle", 0))
        ],
    }
    passes_promtool(tmp_path, [test])


def test_a_cached_models_latency_adds_up_the_stages_triton_summarises(tmp_path: Path) -> None:
    """Triton publishes no request summary for a model with the response cache on (seen on the real server in
    the demo); the P99 comes from the stages instead, so the HPA target and the latency alerts still work."""
    cached = chat()
    cached["spec"]["cache"] = {"enabled": True, "sizeBytes": 1048576}
    rules = rules_of(cached)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}))
    stages_us = {
        "nv_inference_queue_summary_us": 1000,
        "nv_cache_miss_summary_per_model": 100,
        "nv_inference_compute_input_summary_us": 200,
        "nv_inference_compute_infer_summary_us": 5000,
        "nv_inference_compute_output_summary_us": 700,
    }
    inputs = [series(name, f"{value}x10", version="3", quantile="0.99") for name, value in stages_us.items()]
    inputs.append(series("nv_inference_pending_request_count", "2x10", version="3", pod="a"))
    test = {
        "interval": "1m",
        "input_series": inputs,
        "promql_expr_test": [
            {
                "expr": "tollway:request_latency_ms:p99",
                "eval_time": "5m",
                "exp_samples": [
                    {"labels": f'tollway:request_latency_ms:p99{{{SELECTOR},version="3"}}', "value": 7}
                ],
            },
            {  # what the HPA (through prometheus-adapter) and KEDA read while requests wait: the same
                "expr": waiting_p99_expression(SELECTOR),
                "eval_time": "5m",
                "exp_samples": [{"labels": '{model="chat"}', "value": 7}],
            },
        ],
    }
    passes_promtool(tmp_path, [test])


def example_gateway() -> Any:
    return translate_all(documents.load([ROOT / "examples"]), NOW).gateways["ai"].plan.gateway


def test_usage_and_cost_per_consumer_come_from_the_gateways_counters(tmp_path: Path) -> None:
    """pro charges 0.0005 per 1k input and 0.0015 per 1k output tokens; bob uses 1000 and 500 a minute,
    then ten times as much."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": gateway_rule_groups(example_gateway())}))

    def counter(kind: str, values: str) -> dict[str, str]:  # as one Envoy replica exports it
        labels = 'namespace="ai",pod="gateway-0",tier="pro",consumer="bob"'
        return {"series": f"envoy_tollway_usage_{kind}{{{labels}}}", "values": values}

    steady = [
        counter("input", "0+1000x1500"),
        counter("output", "0+500x1500"),
        counter("requests", "0+10x1500"),
    ]
    bob = {"namespace": "ai", "tier": "pro", "consumer": "bob"}
    spike = [counter("input", "0+100x2880 288000+1000x120"), counter("output", "0x3000")]
    alert_rule = next(
        rule
        for group in gateway_rule_groups(example_gateway())
        for rule in group["rules"]
        if rule.get("alert") == "TollwayConsumerUsageSpike" and rule["labels"]["tier"] == "pro"
    )
    tests = [
        {
            "interval": "1m",
            "input_series": steady,
            "promql_expr_test": [
                {
                    "expr": 'tollway:consumer_cost:per_day{namespace="ai"}',
                    "eval_time": "1500m",
                    "exp_samples": [
                        {
                            "labels": _labels("tollway:consumer_cost:per_day", currency="USD", **bob),
                            "value": 1.8,
                        }
                    ],
                },
                {
                    "expr": 'round(tollway:consumer_input_tokens:per_minute{namespace="ai"})',
                    "eval_time": "1500m",
                    "exp_samples": [{"labels": _labels("", **bob), "value": 1000}],
                },
            ],
            "alert_rule_test": [
                {"eval_time": "1500m", "alertname": "TollwayConsumerUsageSpike", "exp_alerts": []}
            ],
        },
        {
            "interval": "1m",
            "input_series": spike,
            "alert_rule_test": [
                {
                    "eval_time": "2990m",
                    "alertname": "TollwayConsumerUsageSpike",
                    "exp_alerts": [
                        {
                            "exp_labels": {**alert_rule["labels"], "consumer": "bob"},
                            "exp_annotations": alert_rule["annotations"],
                        }
                    ],
                }
            ],
        },
    ]
    passes_promtool(tmp_path, tests)


def test_cached_tokens_are_billed_at_the_tiers_cached_price_and_hits_make_a_ratio(tmp_path: Path) -> None:
    """pro charges 0.0005 / 0.0015 per 1k input / output tokens and 0.0001 for an answer from a cache; bob
    uses 1000 and 500 a minute, of which 400 and 100 were answers from the cache."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": gateway_rule_groups(example_gateway())}))

    def answers(result: str, per_minute: int) -> dict[str, str]:
        labels = f'namespace="ai",pod="gateway-0",model="assistant",version="1",tier="pro",cache="{result}"'
        return {"series": f"envoy_tollway_cache_answers{{{labels}}}", "values": f"0+{per_minute}x1500"}

    bob = {"namespace": "ai", "tier": "pro", "consumer": "bob"}
    usage = [
        _bob("envoy_tollway_usage_input", "0+1000x1500"),
        _bob("envoy_tollway_usage_output", "0+500x1500"),
        _bob("envoy_tollway_usage_cached_input", "0+400x1500"),
        _bob("envoy_tollway_usage_cached_output", "0+100x1500"),
        answers("hit", 3),
        answers("miss", 1),
        answers("skip", 5),  # requests that sample are not looked up: not in the ratio
    ]
    day = 1440 * (1000 * 0.0005 + 500 * 0.0015 - 400 * 0.0005 - 100 * 0.0015 + 500 * 0.0001) / 1000
    ratio = {"namespace": "ai", "model": "assistant", "tier": "pro"}
    tests = [
        {
            "interval": "1m",
            "input_series": usage,
            "promql_expr_test": [
                {
                    "expr": 'round(tollway:consumer_cost:per_day{namespace="ai"} * 1000)',
                    "eval_time": "1500m",
                    "exp_samples": [
                        {"labels": _labels("", currency="USD", **bob), "value": round(day * 1000)}
                    ],
                },
                {
                    "expr": 'tollway:cache_hit_ratio:rate5m{namespace="ai"}',
                    "eval_time": "1500m",
                    "exp_samples": [
                        {"labels": _labels("tollway:cache_hit_ratio:rate5m", **ratio), "value": 0.75}
                    ],
                },
            ],
        }
    ]
    assert round(day, 3) == 1.368  # against 1.8 at the full prices (the test above)
    passes_promtool(tmp_path, tests)


def _pro_alert(name: str) -> dict[str, Any]:
    return next(
        rule
        for group in gateway_rule_groups(example_gateway())
        for rule in group["rules"]
        if rule.get("alert") == name and rule["labels"]["tier"] == "pro"
    )


def _bob(metric: str, values: str) -> dict[str, str]:
    """A counter of bob's, of pro, as one Envoy replica exports it."""
    return {
        "series": f'{metric}{{namespace="ai",pod="gateway-0",tier="pro",consumer="bob"}}',
        "values": values,
    }


def _fires(rule: dict[str, Any], series: list[dict[str, str]], at: str, fired: bool) -> dict[str, Any]:
    expected = [{"exp_labels": {**rule["labels"], "consumer": "bob"}, "exp_annotations": rule["annotations"]}]
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": at, "alertname": rule["alert"], "exp_alerts": expected if fired else []}
        ],
    }


def test_a_consumer_running_just_under_its_limit_for_hours_raises_an_alert(tmp_path: Path) -> None:
    """pro allows 600 requests a minute; its alert fires after 3 h at over 90 % of that (540 a minute)."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": gateway_rule_groups(example_gateway())}))
    rule = _pro_alert("TollwayConsumerNearLimit")
    pacing, busy = (
        _bob("envoy_tollway_usage_requests", "0+550x300"),
        _bob("envoy_tollway_usage_requests", "0+500x300"),
    )
    tests = [
        _fires(rule, [pacing], "120m", fired=False),  # not for long enough yet
        _fires(rule, [pacing], "240m", fired=True),
        _fires(rule, [busy], "240m", fired=False),  # busy, under 90 %
    ]
    passes_promtool(tmp_path, tests)


def test_a_consumer_repeating_its_prompts_raises_an_alert(tmp_path: Path) -> None:
    """pro's defaults: over half of an hour's requests repeated, with at least 100 requests that hour."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": gateway_rule_groups(example_gateway())}))
    rule = _pro_alert("TollwayConsumerRepeatsPrompts")
    requests = _bob("envoy_tollway_usage_requests", "0+4x120")  # 240 an hour

    def repeats(per_minute: int) -> dict[str, str]:
        return _bob("envoy_tollway_consumer_repeats", f"0+{per_minute}x120")

    tests = [
        _fires(rule, [requests, repeats(3)], "90m", fired=True),  # 75 % repeated
        _fires(rule, [requests, repeats(1)], "90m", fired=False),  # 25 %: people regenerating now and then
        _fires(
            rule, [_bob("envoy_tollway_usage_requests", "0+1x120"), repeats(1)], "90m", fired=False
        ),  # 60/h
    ]
    passes_promtool(tmp_path, tests)


def _sightings(signal: str, values: str) -> dict[str, str]:
    """bob's first sightings of one signal (pro's), as the ratelimit service exports them."""
    labels = f'namespace="ai",pod="ratelimit-0",key1="{signal}_pro",key2="consumer_bob"'
    return {"series": f"ratelimit_service_rate_limit_within_limit{{{labels}}}", "values": values}


def test_a_key_used_from_many_new_networks_or_programs_at_once_raises_an_alert(tmp_path: Path) -> None:
    """pro's defaults: over 10 networks (half of them new to the key) or 5 user agents in an hour, and over
    3x the key's own hourly average before. bob's key is used from 3 networks by 1 program an hour for
    five hours, then from 40 networks an hour (a minute's 0.67 sightings)."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": gateway_rule_groups(example_gateway())}))
    rule = _pro_alert("TollwayKeyPatternChanged")
    summary = rule["annotations"]["summary"].replace("{{ $labels.consumer }}", "bob")
    steady, burst = "0+0.05x300", "15+0.6667x120"
    usual_agents = _sightings("agents", "0+0.0167x420")
    known = _sightings("new_networks", "0x420")

    def case(series: list[dict[str, str]], at: str, fired: bool) -> dict[str, Any]:
        expected = {
            "exp_labels": {**rule["labels"], "consumer": "bob"},
            "exp_annotations": {"summary": summary},
        }
        return {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": at, "alertname": rule["alert"], "exp_alerts": [expected] if fired else []}
            ],
        }

    stolen = [_sightings("networks", f"{steady} {burst}"), _sightings("new_networks", "0x300 0+0.6667x120")]
    tests = [
        case([*stolen, usual_agents], "390m", fired=True),
        case([*stolen, usual_agents], "300m", fired=False),  # before the burst
        # as many networks, all of them known to the key (its office and its cloud regions): quiet
        case([_sightings("networks", f"{steady} {burst}"), known, usual_agents], "390m", fired=False),
        # a customer that always calls from 40 networks an hour: nothing changed
        case([_sightings("networks", "0+0.6667x420"), known, usual_agents], "390m", fired=False),
        # the same networks, but twenty programs an hour where there was one
        case(
            [
                _sightings("networks", "0+0.05x420"),
                known,
                _sightings("agents", "0+0.0167x300 5+0.3334x120"),
            ],
            "390m",
            fired=True,
        ),
        # a key new this hour, at once from 40 networks new to it: no week to compare with, the floor holds
        case([_sightings("networks", "0+0.6667x90"), _sightings("new_networks", "0+0.6667x90")], "80m", True),
    ]
    passes_promtool(tmp_path, tests)


def test_many_new_keys_first_used_from_one_network_raise_an_alert(tmp_path: Path) -> None:
    """pro's default: over 5 keys created in the last day first used from one network within an hour."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": gateway_rule_groups(example_gateway())}))
    rule = _pro_alert("TollwayNewKeysFromOneNetwork")
    network = "198-51-100-0_24"
    summary = rule["annotations"]["summary"].replace("{{ $labels.network }}", network)

    def new_keys(values: str, where: str = network) -> dict[str, str]:
        labels = f'namespace="ai",pod="ratelimit-0",key1="new_keys_pro",key2="network_{where}"'
        return {"series": f"ratelimit_service_rate_limit_within_limit{{{labels}}}", "values": values}

    def case(series: list[dict[str, str]], fired: bool) -> dict[str, Any]:
        expected = {
            "exp_labels": {**rule["labels"], "network": network},
            "exp_annotations": {"summary": summary},
        }
        return {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "40m", "alertname": rule["alert"], "exp_alerts": [expected] if fired else []}
            ],
        }

    passes_promtool(
        tmp_path,
        [
            case([new_keys("0+0.5x60")], fired=True),  # 20 new keys in 40 minutes from one network
            case([new_keys("0+0.1x60")], fired=False),  # 4: a team signing up
            # 20 new keys, from 20 networks: nobody's farm
            case([new_keys("0+0.025x60", f"198-51-{index}-0_24") for index in range(20)], fired=False),
        ],
    )


def test_responses_without_usage_raise_an_alert_per_consumer(tmp_path: Path) -> None:
    """The gateway counts served responses that reported no tokens (charged their estimate instead)."""
    groups = gateway_rule_groups(example_gateway())
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    alert_rule = next(
        rule for group in groups for rule in group["rules"] if rule.get("alert") == "TollwayUsageUnreported"
    )

    def series(replica: str) -> str:
        return f'envoy_tollway_usage_unreported{{namespace="ai",pod="{replica}",tier="pro",consumer="bob"}}'

    tests = [
        {
            "interval": "1m",
            "input_series": [  # two Envoy replicas: each counts what it served
                {"series": series("gateway-0"), "values": "0x30 1+1x10 11x60"},
                {"series": series("gateway-1"), "values": "0x100"},
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "TollwayUsageUnreported", "exp_alerts": []},
                {
                    "eval_time": "38m",
                    "alertname": "TollwayUsageUnreported",
                    "exp_alerts": [
                        {
                            "exp_labels": {**alert_rule["labels"], "tier": "pro", "consumer": "bob"},
                            "exp_annotations": alert_rule["annotations"],
                        }
                    ],
                },
                {"eval_time": "100m", "alertname": "TollwayUsageUnreported", "exp_alerts": []},
            ],
        }
    ]
    passes_promtool(tmp_path, tests)


def _labels(name: str, **labels: str) -> str:
    return name + "{" + ",".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"


def sla_gateway(**sla: Any) -> Any:
    """The gateway of one tier, `gold`, whose SLA is 99.9 % available (and `sla`'s changes); promtool's
    clock starts at 1970-01-01 00:00 UTC, a Thursday."""
    tier = api_tier("gold", **{"spec.sla": {"availability": "99.9", **sla}})
    return translate_all([tier, model_deployment("chat")], NOW).gateways["ai"].plan.gateway


def gold(name: str, values: str, **labels: str) -> dict[str, str]:
    """A counter of the gateway's, as one Envoy replica exports it."""
    matchers = ",".join(
        f'{key}="{value}"' for key, value in {"namespace": "ai", "tier": "gold", **labels}.items()
    )
    return {"series": f"{name}{{{matchers}}}", "values": values}


#: 60 counted requests a minute on each of two Envoy replicas, for 5 hours.
STEADY = [gold("envoy_tollway_sla_requests", "0+60x300", consumer="bob", pod=pod) for pod in ("a", "b")]


def test_an_outage_inside_a_maintenance_window_spends_no_budget_and_one_outside_burns_it(
    tmp_path: Path,
) -> None:
    """Thursdays 01:00-02:00 are maintenance: every request failing then counts neither way (the minutes
    are not recorded at all), while the same outage from 02:30 burns the budget in every window."""
    groups = gateway_rule_groups(
        sla_gateway(maintenance={"weekly": [{"day": "Thursday", "start": "01:00", "durationMinutes": 60}]})
    )
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    inside = gold("envoy_tollway_sla_errors", "0x60 60+60x59 3600x180", consumer="bob", pod="a")
    outside = gold("envoy_tollway_sla_errors", "0x150 60+60x69 4200x80", consumer="bob", pod="a")
    burn = "TollwayTierSlaBudgetBurn"
    gold_labels = 'namespace="ai",tier="gold"'
    tests = [
        {
            "interval": "1m",
            "input_series": [*STEADY, inside],
            "promql_expr_test": [
                {
                    "expr": "tollway:tier_in_maintenance",
                    "eval_time": eval_time,
                    "exp_samples": [
                        {"labels": f"tollway:tier_in_maintenance{{{gold_labels}}}", "value": value}
                    ],
                }
                for eval_time, value in (("60m", 0), ("61m", 1), ("120m", 1), ("121m", 0))
            ]
            + [
                {  # the 90th minute is not recorded; the 125th is, with no error in it
                    "expr": 'tollway:tier_sla_requests:increase1m{consumer="bob"}',
                    "eval_time": "90m",
                    "exp_samples": [],
                },
                {
                    "expr": "tollway:tier_sla_error_ratio:rate3d",
                    "eval_time": "180m",
                    "exp_samples": [
                        {"labels": f"tollway:tier_sla_error_ratio:rate3d{{{gold_labels}}}", "value": 0}
                    ],
                },
            ],
            "alert_rule_test": [
                {"eval_time": eval_time, "alertname": name, "exp_alerts": []}
                for eval_time in ("100m", "180m")
                for name in (burn, "TollwayTierSlaBudgetLow")
            ],
        },
        {
            "interval": "1m",
            "input_series": [*STEADY, outside],
            "alert_rule_test": [
                {
                    "eval_time": "220m",
                    "alertname": burn,
                    "exp_alerts": [
                        alert(groups, burn, series={}, window=window) for window in ("1h", "6h", "1d", "3d")
                    ],
                },
                {
                    "eval_time": "220m",
                    "alertname": "TollwayTierSlaBudgetLow",
                    "exp_alerts": [alert(groups, "TollwayTierSlaBudgetLow", series={})],
                },
            ],
        },
    ]
    passes_promtool(tmp_path, tests)


def test_minutes_without_traffic_and_one_off_windows_breach_nothing(tmp_path: Path) -> None:
    """A tier nobody calls (its counters flat, or not exported at all) has no error ratio, so no alert; a
    one-off window (02:00-03:00 on the first day) hides the outage inside it."""
    groups = gateway_rule_groups(
        sla_gateway(
            maintenance={"oneOff": [{"start": "1970-01-01T02:00:00Z", "end": "1970-01-01T03:00:00Z"}]}
        )
    )
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    idle = [
        gold(f"envoy_tollway_sla_{count}", "0x300", consumer="bob", pod="a")
        for count in ("requests", "errors")
    ]
    outage = gold("envoy_tollway_sla_errors", "0x120 60+60x59 3600x120", consumer="bob", pod="a")
    quiet = [
        {"eval_time": eval_time, "alertname": name, "exp_alerts": []}
        for eval_time in ("100m", "170m", "240m")
        for name in ("TollwayTierSlaBudgetBurn", "TollwayTierSlaBudgetLow")
    ]
    tests = [
        {"interval": "1m", "input_series": idle, "alert_rule_test": quiet},
        {"interval": "1m", "input_series": [], "alert_rule_test": quiet},
        {"interval": "1m", "input_series": [*STEADY, outage], "alert_rule_test": quiet},
    ]
    passes_promtool(tmp_path, tests)


def test_the_latency_objective_burns_when_too_few_requests_answer_within_its_threshold(
    tmp_path: Path,
) -> None:
    """P99 under 5 s: the gateway's histogram has a bucket at exactly 5000 ms (summed over replicas); 95 %
    within it burns the 1 % allowed 5 times over: the alerts of the 1-day (3x) and 3-day (1x) windows;
    all within: quiet."""
    groups = gateway_rule_groups(sla_gateway(latency={"thresholdMs": 5000, "percent": "99"}))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))

    def histogram(within: int) -> list[dict[str, str]]:
        return [
            row
            for pod in ("a", "b")
            for row in (
                gold("envoy_tollway_sla_latency_ms_bucket", f"0+{within}x300", le="5000", pod=pod),
                gold("envoy_tollway_sla_latency_ms_bucket", "0+100x300", le="+Inf", pod=pod),
                gold("envoy_tollway_sla_latency_ms_count", "0+100x300", pod=pod),
            )
        ]

    burn = "TollwayTierSlaLatencyBurn"
    tests = [
        {
            "interval": "1m",
            "input_series": histogram(95),
            "alert_rule_test": [
                {
                    "eval_time": "100m",
                    "alertname": burn,
                    "exp_alerts": [alert(groups, burn, series={}, window=window) for window in ("1d", "3d")],
                }
            ],
        },
        {
            "interval": "1m",
            "input_series": histogram(100),
            "alert_rule_test": [{"eval_time": "100m", "alertname": burn, "exp_alerts": []}],
        },
    ]
    passes_promtool(tmp_path, tests)


def test_each_versions_ratings_regenerations_and_filtered_answers_set_it_beside_the_others(
    tmp_path: Path,
) -> None:
    """Version 3 rated half 5s and half 1s, version 2 only 4s (two Envoy replicas each); version 3 answered 60
    requests a minute, of which 6 were regenerations and 3 filtered."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules_of(chat())}))
    ratings = [
        series(
            "envoy_tollway_feedback",
            f"0+{per_minute}x1500",
            version=version,
            rating=rating,
            tier="pro",
            pod=pod,
        )
        for version, rating, per_minute in (("3", "5", 1), ("3", "1", 1), ("2", "4", 1))
        for pod in ("a", "b")
    ]
    day = [
        {
            "expr": "tollway:feedback_positive:ratio1d",
            "eval_time": "1450m",
            "exp_samples": [
                {"labels": _labels("tollway:feedback_positive:ratio1d", **labels), "value": value}
                for labels, value in (
                    ({"namespace": "ai", "model": "chat", "version": "3"}, 0.5),
                    ({"namespace": "ai", "model": "chat", "version": "2"}, 1),
                )
            ],
        },
        {
            "expr": 'tollway:feedback:increase1d{version="3"}',
            "eval_time": "1450m",
            "exp_samples": [
                {
                    "labels": _labels(
                        "tollway:feedback:increase1d",
                        namespace="ai",
                        model="chat",
                        version="3",
                        rating=rating,
                    ),
                    "value": 2 * 1440,
                }
                for rating in ("1", "5")
            ],
        },
    ]
    served = [
        series("nv_inference_request_success", "0+60x120", version="3"),
        series("envoy_tollway_regenerations", "0+3x120", version="3", tier="pro", pod="a"),
        series("envoy_tollway_regenerations", "0+3x120", version="3", tier="free", pod="b"),
        series("envoy_tollway_content_filtered", "0+3x120", version="3", tier="pro", pod="a"),
    ]
    hour = [
        {
            "expr": f"tollway:{name}:ratio1h",
            "eval_time": "90m",
            "exp_samples": [
                {
                    "labels": _labels(f"tollway:{name}:ratio1h", namespace="ai", model="chat", version="3"),
                    "value": share,
                }
            ],
        }
        for name, share in (("regenerations", 0.1), ("content_filtered", 0.05))
    ]
    passes_promtool(
        tmp_path,
        [
            {"interval": "1m", "input_series": ratings, "promql_expr_test": day},
            {"interval": "1m", "input_series": served, "promql_expr_test": hour},
        ],
    )


def costed_rules(tmp_path: Path, pricing: dict[str, str]) -> None:
    """chat's rules with a cost (one GPU at 3.00 and its node at 0.60: 3.60 a replica-hour) and the gateway's
    of tier `pro`, priced `pricing`, into tmp_path/rules.yaml."""
    chat = model_deployment(
        "chat", **{"spec.cost": {"gpuHourPrice": "3.00", "nodeHourPrice": "0.60", "outputTokenWeight": "4"}}
    )
    pro = api_tier("pro", **{"spec.models": ["chat"], "spec.pricing": pricing})
    groups = rules_of(chat) + gateway_rule_groups(translate_all([chat, pro], NOW).gateways["ai"].plan.gateway)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))


#: Two Triton pods serving two versions each (four series, two replicas: 7.20 an hour); tier pro sends 600
#: input and 150 output tokens a minute through two Envoy replicas: 20 weighted tokens a second, so an input
#: token costs 0.002 / 20 a second: 0.1 per 1k, an output token 4 times that.
SERVED = [
    series("nv_inference_request_success", "0+60x1500", version=version, instance=pod)
    for version in ("1", "2")
    for pod in ("a", "b")
] + [
    series(f"envoy_tollway_model_{side}_tokens", f"0+{per_minute}x1500", version="1", tier="pro", pod=pod)
    for side, per_minute in (("input", 300), ("output", 75))
    for pod in ("gateway-0", "gateway-1")
]


def rounded(expr: str, value: float, eval_time: str = "1500m", **labels: str) -> dict[str, Any]:
    return {
        "expr": f"round({expr}, 0.0001)",
        "eval_time": eval_time,
        "exp_samples": [{"labels": _labels("", **labels), "value": value}],
    }


def test_the_cost_per_1k_tokens_comes_from_the_replicas_and_the_token_throughput(tmp_path: Path) -> None:
    costed_rules(tmp_path, {"inputPer1kTokens": "0.2", "outputPer1kTokens": "0.8"})
    model = {"namespace": "ai", "model": "chat"}
    tests = [
        {
            "interval": "1m",
            "input_series": SERVED,
            "promql_expr_test": [
                rounded(f"tollway:model_replicas{{{SELECTOR}}}", 2, **model),
                rounded(f"tollway:model_cost_per_hour{{{SELECTOR}}}", 7.2, currency="USD", **model),
                rounded(f"tollway:model_replica_hours:increase1m{{{SELECTOR}}}", 0.0333, **model),
                rounded(
                    f"tollway:model_cost_per_1k_input_tokens:1h{{{SELECTOR}}}", 0.1, currency="USD", **model
                ),
                rounded(
                    f"tollway:model_cost_per_1k_output_tokens:1h{{{SELECTOR}}}", 0.4, currency="USD", **model
                ),
                # a day of 864,000 input and 216,000 output tokens: 172.80 of serving, 345.60 of revenue
                rounded(
                    'tollway:tier_model_margin:1d{tier="pro"}', 172.8, currency="USD", tier="pro", **model
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "1500m", "alertname": "TollwayTierBelowCost", "exp_alerts": []}
            ],
        }
    ]
    passes_promtool(tmp_path, tests)


def test_a_tier_selling_below_cost_over_a_day_raises_an_alert_and_a_quiet_day_does_not(
    tmp_path: Path,
) -> None:
    """pro charges half the cost per 1k tokens: 86.40 of revenue on 172.80 of serving."""
    costed_rules(tmp_path, {"inputPer1kTokens": "0.05", "outputPer1kTokens": "0.2"})
    pro = {"namespace": "ai", "model": "chat", "tier": "pro"}
    rule = next(
        rule
        for group in yaml.safe_load((tmp_path / "rules.yaml").read_text())["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "TollwayTierBelowCost"
    )
    idle = [
        series("nv_inference_request_success", "0x1500", version="1", instance="a"),
        series("envoy_tollway_model_input_tokens", "0x1500", version="1", tier="pro", pod="gateway-0"),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": SERVED,
            "promql_expr_test": [
                rounded('tollway:tier_model_margin:1d{tier="pro"}', -86.4, currency="USD", **pro)
            ],
            "alert_rule_test": [
                {
                    "eval_time": "1500m",
                    "alertname": "TollwayTierBelowCost",
                    "exp_alerts": [
                        {
                            "exp_labels": {**rule["labels"], "currency": "USD"},
                            "exp_annotations": rule["annotations"],
                        }
                    ],
                }
            ],
        },
        {
            "interval": "1m",
            "input_series": idle,
            "alert_rule_test": [
                {"eval_time": "1500m", "alertname": "TollwayTierBelowCost", "exp_alerts": []}
            ],
        },
    ]
    passes_promtool(tmp_path, tests)
