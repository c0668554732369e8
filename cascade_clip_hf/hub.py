"""Publishing a saved model folder to the Hugging Face Hub."""

import os
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from .errors import one_line


# Training leaves resumable state and interrupted saves beside the model; they do not belong on the Hub.
NOT_PUBLISHED = ["checkpoint-*", "checkpoint-*/**", ".*", ".*/**", "*.partial/**"]


def check_push(repo_id: str, token: str | None = None) -> None:
    """
    Checks, without the network, what an upload at the end of a long run will need: a valid repository id
    (`org/name`, or `name` in the token's namespace), a token (passed, in `HF_TOKEN`, or saved by
    `hf auth login`), and the Hub not switched off.

    Raises:
        ValueError: with one line saying what is missing.
    """
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ValueError(f"{repo_id!r} is not a Hub repository id: {one_line(error)}") from None
    if constants.HF_HUB_OFFLINE:
        raise ValueError("HF_HUB_OFFLINE is set: the Hub cannot be reached to upload to (unset it, or do not push)")
    if not (token or get_token()):
        raise ValueError("no Hub token to upload with: run `hf auth login`, set HF_TOKEN, or pass one")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload Cascade-CLIP model",
) -> str:
    """
    Uploads a `save_pretrained` folder (weights, config, processor, code, model card) in one commit and returns
    the commit's URL. (`HfApi.upload_folder` may split a folder over several commits.)
    """
    folder = Path(folder)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
        for name in filter_repo_objects(files, ignore_patterns=NOT_PUBLISHED)
    ]
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message).commit_url


def push_model_to_hub(
    model,
    processor,
    repo_id: str,
    card=None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload Cascade-CLIP model",
) -> str:
    """
    Uploads a model with its processor, code (for `trust_remote_code`) and model card in one commit, where
    `model.push_to_hub` and `processor.push_to_hub` would make one each. Returns the commit's URL.

    Args:
        model ([`CascadeClipForZeroShotSegmentation`]), processor ([`CascadeClipProcessor`]).
        card ([`huggingface_hub.ModelCard`], *optional*): written as the repository's README.md.
    """
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if card is not None:
            card.save(os.path.join(folder, "README.md"))
        return push_folder(folder, repo_id, token=token, private=private, commit_message=commit_message)
