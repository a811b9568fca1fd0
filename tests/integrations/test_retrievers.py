"""Issue 13, acceptance 2: the LlamaIndex and LangChain retrievers, locally and against the server.

LlamaIndex: a ``RetrieverQueryEngine`` with LlamaIndex's ``MockLLM`` (allowed by the issue: the
retrieval is what is tested) returns text and image source nodes from the sample corpus.
LangChain: ``.invoke()`` returns ``Document``\\ s with their doc ids.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mmrag.errors import ForbiddenError, UnauthorizedError
from tests.conftest import SAMPLE_CORPUS
from tests.helpers.sample_server import COLLECTION, SampleServer

pytestmark = pytest.mark.slow
RED = SAMPLE_CORPUS / "images" / "red-circle.png"


def _modes(server: SampleServer) -> dict[str, dict[str, Any]]:
    return {"local": {"kb": server.services.kb(COLLECTION)},
            "remote": {"url": server.url, "api_key": server.reader, "collection": COLLECTION}}


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_llama_index_query_engine_returns_text_and_image_nodes(sample_server: SampleServer, mode: str) -> None:
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import ImageNode, QueryBundle, TextNode

    from mmrag.integrations.llama_index import MmragRetriever

    retriever = MmragRetriever(**_modes(sample_server)[mode], k=6)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query("a red circle")
    nodes = response.source_nodes
    assert len(nodes) == 6
    assert str(response)  # MockLLM echoes its prompt: the nodes' text went through the synthesizer
    texts = [n for n in nodes if type(n.node) is TextNode]
    images = [n for n in nodes if isinstance(n.node, ImageNode)]
    assert texts and images, [type(n.node).__name__ for n in nodes]
    assert all(n.node.get_content() and n.node.ref_doc_id == n.node.metadata["doc_id"] for n in texts)
    assert [n.score for n in nodes] == sorted((n.score for n in nodes), reverse=True)
    red = next(n for n in images if n.node.metadata["doc_id"] == "images/red-circle.png")
    assert base64.b64decode(red.node.image) == RED.read_bytes()  # type: ignore[attr-defined]
    assert red.node.image_mimetype == "image/png"  # type: ignore[attr-defined]
    if mode == "local":
        assert red.node.image_path == str(RED)  # type: ignore[attr-defined]
    else:
        assert red.node.image_url.startswith(f"{sample_server.url}/v1/collections/{COLLECTION}/images/")  # type: ignore[attr-defined]
    # By image: the query bundle's image_path.
    by_image = retriever.retrieve(QueryBundle(query_str="", image_path=str(RED)))
    assert by_image[0].node.metadata["doc_id"] == "images/red-circle.png"


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_langchain_invoke_returns_documents_with_doc_ids(sample_server: SampleServer, mode: str) -> None:
    from langchain_core.documents import Document

    from mmrag.integrations.langchain import MmragRetriever

    docs = MmragRetriever(**_modes(sample_server)[mode], k=3).invoke("When does the building close on weekdays?")
    assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
    assert docs[0].metadata["doc_id"] == "visitor-faq.html", [d.metadata for d in docs]
    assert "18:00" in docs[0].page_content
    assert all(d.id == d.metadata["record_id"] and d.id.startswith(d.metadata["doc_id"]) for d in docs)
    images = MmragRetriever(**_modes(sample_server)[mode], k=1, modality="image").invoke("a red circle")
    assert [d.metadata["doc_id"] for d in images] == ["images/red-circle.png"]
    assert images[0].metadata["modality"] == "image"


def test_remote_refusals_are_mmrag_errors(sample_server: SampleServer) -> None:
    from mmrag.integrations.langchain import MmragRetriever
    from mmrag.integrations.llama_index import MmragRetriever as LlamaRetriever

    with pytest.raises(ForbiddenError, match="may not use collection 'sample'"):
        MmragRetriever(url=sample_server.url, api_key=sample_server.other, collection=COLLECTION).invoke("x")
    with pytest.raises(UnauthorizedError):
        LlamaRetriever(url=sample_server.url, api_key="mmrag_nope").retrieve("x")
