"""Fixtures of the document-retrieval tests: the real embedding model, the corpus, PDF writers.

The corpus is the handbook of a fictional company (Halcyon Robotics) in corpus/; its PDFs are
generated here with fpdf2 (not committed) from the texts below.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from labs.embeddings import DEFAULT_EMBEDDING_MODEL, EmbeddingModel, load_embedding_model
from labs.rag.documents import DocumentIndex

CORPUS = Path(__file__).resolve().parent / "corpus"

# (filename, title, pages of (heading, paragraph)).
PDF_DOCUMENTS: list[tuple[str, str, list[list[tuple[str, str]]]]] = [
    (
        "travel-policy.pdf",
        "Travel Policy",
        [
            [
                (
                    "Booking travel",
                    "All business trips are booked through our travel agency, Wayfarer Travel, in the Wayfarer portal. "
                    "Book at least 14 days before departure to get lower fares. Trips must be approved by your manager "
                    "in the portal before anything is booked.",
                ),
                (
                    "Flights and trains",
                    "Take the train when the journey takes less than four hours. Flights shorter than six hours are booked "
                    "in economy class. For flights longer than six hours premium economy is allowed, and business class "
                    "only with the written approval of a vice president.",
                ),
                (
                    "Accommodation",
                    "Stay in hotels from the Wayfarer preferred list where possible. The nightly hotel limits of the "
                    "expense policy apply. Airbnb and other private holiday rentals are not allowed for safety and "
                    "insurance reasons.",
                ),
            ],
            [
                (
                    "Travel insurance and safety",
                    "Every business traveller is covered by the company travel insurance from Atlas Assurance, including "
                    "medical emergencies and repatriation. Before travelling to a high-risk country, complete the travel "
                    "risk assessment and register your trip with the security team.",
                ),
                (
                    "Per diem",
                    "For trips longer than one day, a per diem of 35 EUR per day is paid for incidental costs in addition "
                    "to meal expenses. Weekend days spent travelling count as working time and can be taken back as time "
                    "off within one month.",
                ),
            ],
        ],
    ),
    (
        "data-retention.pdf",
        "Data Retention Policy",
        [
            [
                (
                    "Purpose",
                    "This policy sets how long Halcyon Robotics keeps each kind of record and how records are deleted "
                    "when that time is over. It follows the GDPR and local tax law.",
                ),
                (
                    "Retention periods",
                    "Invoices and accounting records are kept for 10 years. Employee personnel files are kept for 5 years "
                    "after the employee leaves. Job applications from candidates who were not hired are deleted after 6 "
                    "months unless the candidate agrees to a longer period. Robot telemetry logs from customer sites are "
                    "kept for 90 days. CCTV recordings in our offices are kept for 30 days.",
                ),
                (
                    "Deletion requests",
                    "When a customer or an employee asks us to delete their personal data, the Privacy team must confirm "
                    "and complete the deletion within 30 days. Send such requests to privacy@halcyon-robotics.example.",
                ),
                (
                    "Backups",
                    "Backups are encrypted and kept for 35 days. Deleted data disappears from backups when they expire; "
                    "it is never restored into live systems.",
                ),
            ]
        ],
    ),
]


def write_pdf(path: Path, title: str | None, pages: list[list[tuple[str, str]]]) -> Path:
    """A text PDF: a heading and wrapped paragraphs per section, one list of sections per page."""
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    for number, sections in enumerate(pages):
        pdf.add_page()
        if number == 0 and title:
            pdf.set_font("Helvetica", style="B", size=16)
            pdf.multi_cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
        for heading, paragraph in sections:
            pdf.set_font("Helvetica", style="B", size=12)
            pdf.multi_cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("Helvetica", size=11)
            pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(4)
    pdf.output(str(path))
    return path


def write_blank_pdf(path: Path) -> Path:
    """A PDF with one page holding only a drawn rectangle: no text to extract."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="session")
def embedding_model() -> EmbeddingModel:
    return load_embedding_model(DEFAULT_EMBEDDING_MODEL)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed corpus plus its generated PDFs, in a temporary folder."""
    folder = tmp_path_factory.mktemp("corpus") / "handbook"
    shutil.copytree(CORPUS, folder)
    for filename, title, pages in PDF_DOCUMENTS:
        write_pdf(folder / filename, title, pages)
    return folder


@pytest.fixture
def open_index(embedding_model: EmbeddingModel, tmp_path: Path) -> Iterator[Callable[..., DocumentIndex]]:
    """Opens DocumentIndexes (default: local mode in tmp_path/qdrant) and closes them afterwards."""
    opened: list[DocumentIndex] = []

    def factory(**kwargs: object) -> DocumentIndex:
        kwargs.setdefault("path", tmp_path / "qdrant")
        index = DocumentIndex(kwargs.pop("model", embedding_model), **kwargs)  # type: ignore[arg-type]
        opened.append(index)
        return index

    yield factory
    for index in opened:
        index.close()
