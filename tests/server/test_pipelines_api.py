"""Pipelines over the REST API: create and change them, store their steps, build from them."""

from __future__ import annotations

import httpx
import pytest

from conveyor import protocol as p
from tests.harness import Api
from tests.server.drive import Driver, cmd, steps

pytestmark = pytest.mark.anyio


async def put(api: Api, slug: str, **body: object) -> httpx.Response:
    return await api.http.put(f"/api/v1/pipelines/{slug}", json=body)


async def test_put_creates_and_changes_only_what_is_given(api: Api) -> None:
    assert (await api.http.get("/api/v1/pipelines")).json() == []
    r = await put(api, "web", name="Web site", repository="git@example.com:web.git")
    assert r.status_code == 200, r.text
    web = p.PipelineOut.model_validate(r.json())
    assert (web.slug, web.name, web.repository, web.default_branch) == (
        "web", "Web site", "git@example.com:web.git", "main",
    )  # fmt: skip
    assert (web.steps, web.steps_file) == (None, ".buildkite/pipeline.yml")

    r = await put(api, "web", default_branch="trunk", steps_file="ci/pipeline.yml")
    changed = p.PipelineOut.model_validate(r.json())
    assert (changed.id, changed.name, changed.default_branch, changed.steps_file) == (
        web.id, "Web site", "trunk", "ci/pipeline.yml",
    )  # fmt: skip
    # A pipeline created with nothing given is named after its slug.
    assert p.PipelineOut.model_validate((await put(api, "api")).json()).name == "api"
    listed = [
        p.PipelineOut.model_validate(x) for x in (await api.http.get("/api/v1/pipelines")).json()
    ]
    assert [x.slug for x in listed] == ["api", "web"]
    got = await api.http.get("/api/v1/pipelines/web")
    assert p.PipelineOut.model_validate(got.json()) == changed

    r = await api.http.get("/api/v1/pipelines/nope")
    assert r.status_code == 404 and r.json()["message"] == "no pipeline 'nope'"
    bad_requests: list[tuple[str, dict[str, object]]] = [
        ("bad%20slug!", {}),
        ("web", {"bogus": 1}),
        ("web", {"name": ""}),
        ("web", {"name": None}),
        ("web", {"default_branch": "x" * 256}),
    ]
    for slug, body in bad_requests:
        r = await put(api, slug, **body)
        assert r.status_code == 422, (slug, body, r.text)
        assert r.json()["message"]
    assert p.PipelineOut.model_validate((await api.http.get("/api/v1/pipelines/web")).json()) == (
        changed
    )
    # Pipelines a build created on first use are listed too.
    await api.create_build("steps:\n  - command: x\n", slug="implicit")
    slugs = [x["slug"] for x in (await api.http.get("/api/v1/pipelines")).json()]
    assert slugs == ["api", "implicit", "web"]


async def test_builds_from_stored_steps(driver: Driver, api: Api) -> None:
    stored = (
        "steps:\n"
        "  - label: greet\n"
        "    command: echo $GREETING on $BUILDKITE_BRANCH\n"
        "    agents: {queue: greet}\n"
    )
    r = await put(api, "hello", steps=stored, default_branch="trunk", filename="hello.yml")
    assert r.status_code == 200, r.text
    assert p.PipelineOut.model_validate(r.json()).steps == stored

    r = await api.http.post("/api/v1/pipelines/hello/builds", json={"env": {"GREETING": "hi"}})
    assert r.status_code == 201, r.text
    build = p.BuildOut.model_validate(r.json())
    # No branch given: the pipeline's default branch.
    assert (build.pipeline, build.number, build.branch) == ("hello", 1, "trunk")
    assert [j.command for j in build.jobs] == ["echo hi on trunk"]
    driver.build = build
    await driver.run("greet")
    assert (await driver.refresh()).state == p.BuildState.PASSED

    r = await api.http.post("/api/v1/pipelines/hello/builds", json={"branch": "dev"})
    assert r.status_code == 201, r.text
    assert p.BuildOut.model_validate(r.json()).jobs[0].command == "echo  on dev"
    # Text given wins over the stored steps.
    other = await api.create_build("steps:\n  - command: other\n", slug="hello")
    assert [j.command for j in other.jobs] == ["other"] and other.branch == "trunk"

    # No stored steps, or no pipeline at all: a clear 422, and no build.
    await put(api, "empty")
    for slug in ["empty", "missing"]:
        r = await api.http.post(f"/api/v1/pipelines/{slug}/builds", json={})
        assert r.status_code == 422, r.text
        assert "stored steps" in r.json()["message"], r.text
        assert f"conveyor pipeline set {slug} --steps FILE" in r.json()["message"]
    assert (await api.http.get("/api/v1/pipelines/missing")).status_code == 404
    # Stored steps can be removed again.
    r = await put(api, "hello", steps=None)
    assert r.status_code == 200 and r.json()["steps"] is None
    r = await api.http.post("/api/v1/pipelines/hello/builds", json={})
    assert r.status_code == 422
    assert r.json()["message"].startswith("pipeline 'hello' has no stored steps: ")


BAD_STEPS = [
    ("steps:\n  - command: [unclosed\n", "ci.yml:3"),
    ("steps:\n  - command: a\n  - bogus: b\n", "ci.yml:3"),
    ("steps:\n  - command: a\n    key: x\n  - command: b\n    key: x\n", "ci.yml:4"),
    ("steps:\n  - command: a\n    depends_on: nope\n", "ci.yml:2"),
    ("steps:\n  - key: a\n    command: a\n    depends_on: b\n  - key: b\n    command: b\n"
     "    depends_on: a\n", "ci.yml:"),
]  # fmt: skip


async def test_bad_stored_steps_are_rejected_naming_the_line(api: Api) -> None:
    good = "steps:\n  - command: good\n"
    assert (await put(api, "kept", steps=good)).status_code == 200
    for text, where in BAD_STEPS:
        for slug in ["kept", "fresh"]:
            r = await put(api, slug, steps=text, filename="ci.yml", name="changed")
            assert r.status_code == 422, (text, r.text)
            assert r.json()["message"].startswith(where), (text, r.json())
    # Nothing stored: the other fields of a rejected request are not either.
    kept = p.PipelineOut.model_validate((await api.http.get("/api/v1/pipelines/kept")).json())
    assert (kept.steps, kept.name) == (good, "kept")
    assert (await api.http.get("/api/v1/pipelines/fresh")).status_code == 404
    # Without a filename, messages say "steps".
    r = await put(api, "kept", steps="steps: 3\n")
    assert r.status_code == 422 and r.json()["message"].startswith("steps:1")
    r = await put(api, "kept", steps="")
    assert r.status_code == 422


async def test_build_out_shows_steps_and_version_follows_them(driver: Driver) -> None:
    build = await driver.create(
        steps(
            cmd("a", "key: a"),
            "- trigger: nowhere",
            "  label: Deploy elsewhere",
            "- wait",
            cmd("b", "depends_on: a"),
        )
    )
    a, trigger, wait, b = build.steps
    assert (a.key, a.kind, a.label, a.state) == ("a", "command", "a", "running")
    # The trigger step could not make its build: it failed, saying why.
    assert (trigger.kind, trigger.state, trigger.triggered_build) == ("trigger", "failed", None)
    assert trigger.error is not None and "no pipeline 'nowhere'" in trigger.error
    assert wait.kind == "wait" and set(wait.depends_on) == {a.id, trigger.id}
    assert set(b.depends_on) == {a.id, wait.id}
    assert build.state == p.BuildState.FAILING
    assert all(j.step_id == a.id for j in build.jobs if j.label == "a")
    assert build.version

    # Triggered builds are named by pipeline and number.
    r = await driver.api.http.put(
        "/api/v1/pipelines/child", json={"steps": "steps:\n  - command: child\n"}
    )
    assert r.status_code == 200
    parent = await driver.create(steps("- trigger: child", "  async: true"))
    [step] = parent.steps
    assert step.state == "passed" and step.triggered_build is not None
    assert (step.triggered_build.pipeline, step.triggered_build.number) == ("child", 1)
