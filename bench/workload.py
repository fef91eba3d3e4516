"""The fixed benchmark workload and the per-request measurements every system reports.

The prompts are a fixed, ordered list (no randomness), so every run and every system sees the
same requests. Timings are `time.perf_counter()` seconds taken on the client side: when the
request was sent, when its first and last output tokens arrived, and how many tokens came.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

QUESTIONS: tuple[str, ...] = (
    "What is the capital of France?",
    "Explain photosynthesis in simple terms.",
    "How does a refrigerator keep food cold?",
    "Give me three tips for better sleep.",
    "What is the difference between weather and climate?",
    "Why is the sky blue?",
    "How do vaccines train the immune system?",
    "Write a short poem about the sea.",
    "What causes the seasons on Earth?",
    "How do I make a cup of green tea?",
    "What is a prime number? Give examples.",
    "Summarize the plot of Romeo and Juliet.",
    "How does a bicycle stay upright while moving?",
    "What are the benefits of regular exercise?",
    "Explain what an API is to a beginner.",
    "Why do leaves change color in autumn?",
    "What is the water cycle?",
    "How can I improve my public speaking?",
    "What is the tallest mountain in the world?",
    "Describe how a rainbow forms.",
    "What does a CPU do in a computer?",
    "Give me a simple recipe for pancakes.",
    "Why do cats purr?",
    "What is inflation in economics?",
    "How do airplanes generate lift?",
    "What is the Pythagorean theorem?",
    "Suggest a name for a friendly robot.",
    "How do bees make honey?",
    "What is the difference between a virus and a bacterium?",
    "Explain recursion with an everyday example.",
    "What are the planets of the solar system?",
    "How should I prepare for a job interview?",
    "Why does ice float on water?",
    "What is a black hole?",
    "How do I start learning to play the guitar?",
    "What is the role of the heart in the body?",
    "Explain the rules of chess briefly.",
    "What is machine learning?",
    "How do tides work?",
    "Write a haiku about autumn leaves.",
    "What is the difference between RAM and storage?",
    "How can I reduce stress at work?",
    "Why do we have time zones?",
    "What is democracy?",
    "How does a compass work?",
    "What foods are rich in protein?",
    "Explain the greenhouse effect.",
    "What is the speed of light?",
    "How do I write a good email to my manager?",
    "What is the difference between a lake and a sea?",
    "Why do onions make people cry?",
    "Give me a fun fact about octopuses.",
    "What is a sorting algorithm?",
    "How do solar panels produce electricity?",
    "What are the main causes of earthquakes?",
    "Describe the taste of a lemon to someone who never had one.",
    "What is the purpose of a budget?",
    "How do birds know where to migrate?",
    "What is an ecosystem?",
    "Tell me a short story about a lost key.",
    "Why is exercise good for the brain?",
    "What is the difference between HTTP and HTTPS?",
    "How do I keep a houseplant alive?",
    "What makes a good team leader?",
)
assert len(QUESTIONS) == 64 and len(set(QUESTIONS)) == 64

# Shared system prompt of the prefix-caching section (~400 tokens with the SmolLM2 tokenizer).
SHARED_SYSTEM_PROMPT = " ".join([
    "You are Ada, the customer support assistant of Northwind Outdoor Supply, a small company that sells",
    "camping, hiking and climbing equipment online and in three shops. Follow these rules in every answer.",
    "Be friendly, concise and accurate; never invent prices, stock levels or order details you were not given.",
    "Orders placed before two in the afternoon on a working day leave the warehouse the same day; later orders",
    "leave the next working day. Standard delivery takes two to four working days and is free above fifty",
    "euros; express delivery takes one working day and costs nine euros. Customers may return unused items",
    "within sixty days for a full refund; used items can be returned within thirty days if they are faulty.",
    "Tents, sleeping bags and backpacks carry a two-year warranty; climbing ropes, harnesses and carabiners",
    "must never be returned once used, for safety reasons, and are replaced only when a manufacturer recall",
    "applies. Gift cards are valid for three years and cannot be exchanged for cash. The shops open from nine",
    "to seven on weekdays and from ten to five on Saturdays; they are closed on Sundays and public holidays.",
    "The Lyon shop offers free tent repairs for members of the loyalty club, which anyone can join for free",
    "at the till or on the website; members collect one point per euro spent and get a ten euro voucher for",
    "every two hundred points. When a customer asks for advice on equipment, ask about the season, the",
    "altitude and the number of nights before recommending anything, and mention the weight of the items.",
    "When a customer is unhappy, apologise once, explain what you can do, and offer to pass the case to a",
    "human colleague by email at help@northwind.example within one working day. Never share personal data",
    "of other customers. Never give medical advice: for injuries, tell the customer to contact a doctor or",
    "the emergency number. For questions unrelated to the company, answer briefly and helpfully, then offer",
    "to help with anything about their order or equipment. Always answer in the language of the customer.",
])

PREFIX_QUESTIONS: tuple[str, ...] = (
    "When will my order arrive if I order now?",
    "Can I return a used climbing rope?",
    "How much does express delivery cost?",
    "What are the opening hours on Saturday?",
    "How do I join the loyalty club?",
    "Is there a warranty on sleeping bags?",
    "Can I exchange a gift card for cash?",
    "Which tent do you recommend for winter camping?",
    "My backpack strap broke after a month. What can I do?",
    "Do you repair tents in the Lyon shop?",
    "How long are gift cards valid?",
    "Is delivery free for a forty euro order?",
    "Can I return unused boots after six weeks?",
    "Are the shops open on Sunday?",
    "How many points do I need for a voucher?",
    "I twisted my ankle on a hike. What should I do?",
)


def chat_messages(question: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": question}]


def workload_questions(count: int) -> list[str]:
    """The first `count` questions, cycling through the fixed set if more are asked for."""
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]


@dataclass
class RequestTiming:
    """Client-side timestamps of one request (perf_counter seconds)."""

    submitted: float
    first: float | None = None
    last: float | None = None
    finished: float | None = None
    tokens: int = 0
    cached_prompt_tokens: int = 0

    def record(self, new_tokens: int, now: float) -> None:
        """Output arrived at `now` carrying `new_tokens` tokens."""
        if new_tokens <= 0:
            return
        if self.first is None:
            self.first = now
        self.last = now
        self.tokens += new_tokens

    @property
    def ttft(self) -> float:
        return math.nan if self.first is None else self.first - self.submitted

    @property
    def tpot(self) -> float:
        """Mean time between output tokens after the first: (last - first) / (n - 1)."""
        if self.first is None or self.last is None or self.tokens < 2:
            return math.nan
        return (self.last - self.first) / (self.tokens - 1)


@dataclass
class LoadResult:
    """One system at one concurrency level."""

    system: str
    concurrency: int
    timings: list[RequestTiming]
    wall_s: float
    notes: list[str] = field(default_factory=list)
    other_cores: float = math.nan  # cores other processes kept busy meanwhile (see machine.OtherLoad)

    @property
    def output_tokens(self) -> int:
        return sum(t.tokens for t in self.timings)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def ttft_p50(self) -> float:
        return percentile([t.ttft for t in self.timings], 50)

    @property
    def ttft_p95(self) -> float:
        return percentile([t.ttft for t in self.timings], 95)

    @property
    def tpot_p50(self) -> float:
        return percentile([t.tpot for t in self.timings], 50)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of the non-NaN values."""
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        return math.nan
    rank = (len(data) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)
