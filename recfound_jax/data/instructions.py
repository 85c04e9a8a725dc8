"""The paper's instruction texts (Appendix B.2 and B.3) and the Alpaca-style prompt block they go into.

`alpaca` assembles a generative prompt as the released data writes it (system line, instruction, optional
input and lettered options, "### Response:"); `recfound_jax.data.formatting.input_text` and `options_of`
read it back. The synthetic world's writers and the interaction-log converter both write with these.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recfound_jax.tasks import BY_SHORT

Row = dict

SYSTEM_PROMPT = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")
LETTERS = "ABCDEFGHIJKLMNOPQRST"

# ---- instructions ------------------------------------------------------------------------------------
# The paper's instructions (Appendix B.2) verbatim, except where marked "adapted": QR's are shortened
# (the paper's run to ~100 tokens and rewrite every turn; here only the last query is rewritten) and
# UP/IP's name products where the paper's name movies or books. Passage instructions are the paper's
# examples (B.3). The paper's longest instructions (over ~32 tokens: three of SR, two of PRP, one of SA,
# two of AVE, one of PM, two of AP) are left out to keep prompts short enough for the CPU demo.
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "U2I": (
        "Represent this sequence of user actions to predict the next product he/she will purchase (User sequence is in reverse chronological order):",
        "Encode this user activity sequence to forecast their next product purchase (User sequence is in reverse chronological order):",
        "Create an embedding of this user sequence to determine the next product they will purchase (User sequence is in reverse chronological order):",
        "Generate a representation of this user sequence to find the next product this user will buy (User sequence is in reverse chronological order):",
        "Represent this user sequence to retrieve the next product this user will buy (User sequence is in reverse chronological order):",
    ),
    "Q2I": (
        "Represent this user query to find a matching item:",
        "Generate a representation of this user query to locate a relevant item:",
        "Create an embedding of this user query to retrieve a relevant item:",
        "Use the representation of the user query to identify a relevant item:",
        "Represent this user query to retrieve a relevant item:",
    ),
    "I2I": (
        "Create an embedding for the product using its title and categories to help find similar items",
        "Generate an embedding for a product based on its title and categories to facilitate the retrieval of similar items",
        "Based on the title and categories of a product, generate an embedding to identify similar products",
        "Using the product's title and categories, produce an embedding to retrieve items that are alike",
        "Given the title of a product and its category, please generate an embedding for the product to retrieve similar items",
    ),
    "QR": (  # adapted
        "Rephrase the last query of the conversation, using the preceding context to specify its pronoun.",
        "Rewrite the last query so that it is clear on its own, replacing the pronoun with the product it means.",
        "Use the preceding context to rewrite the last query, specifying the product its pronoun refers to.",
    ),
    "SR": (
        "Based on the user's historical purchases, rank the items in options and predict the next product of the user's interest from the provided options.",
        "Rank the items in options and predict the user's next purchase from the listed options by analyzing her historical purchases.",
    ),
    "PRP": (
        "Given the title of two products, predict if the two products are similar, if the two products will be purchased or viewed together. Answer only from the options.",
        "Evaluate the titles of Product 1 and Product 2, then choose the option that best describes the relation between the two products.",
        "Predict whether two products are similar, whether two products are likely to be purchased or viewed together based on their titles. Choose your answer from the provided options.",
    ),
    "SA": (
        "Given the user's review, identify the user's sentiment from the listed options. Answer using one of the options.",
        "Assess the user's sentiment in the provided review and select the appropriate sentiment option from the list as the answer.",
        "Determine the sentiment expressed by the user in her review from the provided choices, and respond by selecting one of the available options.",
    ),
    "AVE": (
        "Extract the value of the target attribute from the given product information and output it along with the corresponding source.",
        "Parse the product information to locate the target attribute, and then provide the extracted value of the target attribute and its source in the output, specifying None if the attribute is not present.",
    ),
    "PM": (
        "Given the title, description, manufacturer, and price of two products, identify if they are the same product. Only output yes or no.",
        "Check the details of the two products to see if they refer to the same product. Output only yes or no.",
        "Based on the product information, predict if the two products are identical or not. Output yes if they are identical or no otherwise.",
        "Compare the details of two given products to determine if they are identical. Output yes if they are identical or no otherwise.",
    ),
    "UP": (  # adapted; {history} is filled in
        "Given user's product rating history: {history}. Analyze user's preferences on products (category, brand, color) and explain them.",
        "Given this user's shopping history over time: {history}. Analyze user's preferences on products about factors like category, brand and color.",
    ),
    "IP": (  # adapted; {title} and {source} are filled in
        "Introduce product {title} and describe its attributes (including but not limited to category, brand, color, material, size, price, opinion).",
        "Introduce product {title}, which is from the {source} shop, and describe its attributes such as category, brand, size, price, opinion.",
    ),
    "AP": (
        "Given a question and the related document, predict if the question is answerable based on the information provided in the document. Output only yes or no.",
        "Evaluate the answerability of a question by analyzing the related document, outputting yes if the document contains information addressing the question, and no otherwise.",
        "Output yes if the supporting document can answer the given question. Otherwise, output no.",
    ),
    "AG": (
        "Given a question and the related document, and generate the answer to the question based on the information provided in the document.",
        "Generate an answer to the question by utilizing the information contained in the document.",
        "Extract information from the supporting document to answer the given question.",
        "Answer the given question using the supporting document.",
        "Answer the given question by extracting information from the supporting document.",
    ),
}
PASSAGE_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "U2I": ("Represent this product to match a user sequence:", "Encode this product to fit a user sequence:"),
    "Q2I": ("Utilize the product's title to form a representation that corresponds to a user query:",
            "Represent the given product with a title to match a user query:"),
    "I2I": ("Using the attributes and details of an item, create an embedding to help find similar products:",
            "Based on an item's details and attributes, produce an embedding to identify similar products:"),
}


def alpaca(instruction: str, input_text: str | None = None, options: Sequence[str] | None = None) -> str:
    """The fully assembled prompt: system line, instruction, optional input and lettered options."""
    parts = [SYSTEM_PROMPT, f"### Instruction:\n{instruction}"]
    if input_text:
        parts.append(f"### Input:\n{input_text}")
    if options:
        parts.append("### Options:\n" + "\n".join(f"{LETTERS[i]}: {o}" for i, o in enumerate(options)))
    parts.append("### Response:")
    return "\n\n".join(parts)


def ordinal(i: int) -> str:
    """1st, 2nd, 3rd, 4th ... (the SR history's line labels)."""
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(i, f"{i}th")


def generative_row(short: str, prompt: str, answer: str) -> Row:
    """A generative row of the released layout: ``{"text": [prompt, answer], "task"}``."""
    return {"text": [prompt, answer], "task": BY_SHORT[short].name}


def embedding_row(short: str, split: str, rng: np.random.Generator, query: str,
                  pos: Sequence[str], neg: Sequence[str], source: str) -> Row:
    """An embedding row of the released layout: the query and each passage with one of the task's
    instructions drawn from ``rng``; valid and test rows carry their ``source`` (sub-dataset)."""
    passage = lambda text: [str(rng.choice(PASSAGE_INSTRUCTIONS[short])), text]
    row: Row = {"query": [str(rng.choice(INSTRUCTIONS[short])), query],
                "pos": [passage(p) for p in pos], "neg": [passage(n) for n in neg],
                "task": BY_SHORT[short].name}
    if split != "train":
        row["source"] = source
    return row
