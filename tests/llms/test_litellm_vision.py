"""Images reach vision-capable models as image parts, through LiteLLM, on the wire (a local OpenAI-compatible server)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mmrag.answering import Answerer
from mmrag.llms.echo import EchoChatModel
from mmrag.llms.litellm import LiteLLMChatModel
from mmrag.types import Hit, ImageAsset
from tests.helpers.judge_server import JudgeServer

TEXT = Hit(id="t#t0", doc_id="shapes.md", source="/x/shapes.md", modality="text", score=0.9,
           text="A red circle marks the exit.", metadata={})


def _image_hit(tmp_path: Path) -> Hit:
    path = tmp_path / "red.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(path)
    return Hit(id="red.png#i0", doc_id="red.png", source=str(path), modality="image", score=0.8,
               metadata={"doc_type": "image", "image_index": 0})


def test_vision_model_gets_image_parts_text_model_gets_descriptions(tmp_path: Path) -> None:
    hits = [TEXT, _image_hit(tmp_path)]
    vision = EchoChatModel()
    vision.supports_vision = True  # type: ignore[attr-defined]
    messages = Answerer(vision).messages("What marks the exit?", Answerer(vision).pack(hits),
                                         ImageAsset(path=str(tmp_path / "red.png")))
    user = messages[1]
    assert len(user.images) == 2 and all(u.startswith("data:image/png;base64,") for u in user.images)
    assert "(shown as image part 1)" in user.content and "image part 2" in user.content
    wire = user.to_dict()["content"]
    assert wire[0]["type"] == "text" and [p["type"] for p in wire[1:]] == ["image_url", "image_url"]
    text_only = Answerer(EchoChatModel())
    plain = text_only.messages("What marks the exit?", text_only.pack(hits))[1]
    assert plain.images == () and "Image red.png" in plain.content and plain.to_dict()["content"] == plain.content


def test_image_parts_cross_litellm_to_an_openai_compatible_server(tmp_path: Path) -> None:
    with JudgeServer() as server:
        model = LiteLLMChatModel("openai/gpt-4o", api_base=server.url, api_key="test-key", timeout=30, num_retries=0)
        assert model.supports_vision, "litellm's model map knows gpt-4o takes images"
        Answerer(model).answer("What marks the exit?", [TEXT, _image_hit(tmp_path)])
        assert server.images == 1
        assert not LiteLLMChatModel("mmrag-local/smollm2-135m").supports_vision
