"""The Hugging Face Hub: reading models and tokenizers from it without waiting on it when it is out of reach, and
publishing a saved model folder to it."""

import os
import tempfile
from pathlib import Path

from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    constants,
    get_hf_file_metadata,
    get_token,
    hf_hub_download,
    hf_hub_url,
    is_offline_mode,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects, validate_repo_id
from transformers.utils import logging

from .errors import one_line


logger = logging.get_logger(__name__)

# Training leaves resumable state and interrupted saves beside the model; they do not belong on the Hub.
NOT_PUBLISHED = ["checkpoint-*", "checkpoint-*/**", ".*", ".*/**", "*.partial/**"]
# The Inference Endpoints handler every save_pretrained writes beside the model.
HANDLER_FILE = Path(__file__).with_name("handler.py")


def out_of_reach_reason() -> str:
    """Why the Hub was not asked, for an error when the cache lacks what it would have given."""
    return "HF_HUB_OFFLINE is set" if is_offline_mode() else "the Hub cannot be reached"


def is_transient(error: HfHubHTTPError) -> bool:
    """Whether the Hub's HTTP error says it is out of service for now (5xx, a timeout, too many requests) rather
    than answering (no such repository or file, no access)."""
    status = error.response.status_code if error.response is not None else None
    return status is None or status >= 500 or status in (408, 429)


def hub_out_of_reach(repo_id: str, filename: str, repo_type: str | None = None) -> Exception | None:
    """
    Asks the Hub once, without retries, about a file of a repository: None when it answers with the file, else the
    error saying why it cannot be reached (offline mode, no connection, a server error, too many requests).

    Raises:
        HfHubHTTPError: the Hub's definite answers (4xx: RepositoryNotFoundError, GatedRepoError,
            RemoteEntryNotFoundError, ...).
    """
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, repo_type=repo_type))
    except HfHubHTTPError as error:
        if not is_transient(error):
            raise
        return error
    except Exception as error:  # offline mode, and the transport errors of huggingface_hub's HTTP client (httpx's)
        return error
    return None


def download_from_hub(repo_id: str, filename: str) -> tuple[Path, bool]:
    """
    A file of a Hub repository: downloaded, or the cache's copy when the Hub cannot be reached. Without a copy, this
    fails at once, where `hf_hub_download` alone would retry for about 25 seconds, logging each try.

    Returns:
        The file, and whether the Hub could be reached.

    Raises:
        LocalEntryNotFoundError: the Hub cannot be reached (or HF_HUB_OFFLINE is set) and the cache has no copy.
        HFValidationError: `repo_id` is not a Hub id.
        HfHubHTTPError: the Hub's definite answers, as `hf_hub_download` raises them: RepositoryNotFoundError,
            GatedRepoError, RemoteEntryNotFoundError, and other 4xx errors.
    """
    validate_repo_id(repo_id)
    unreachable = hub_out_of_reach(repo_id, filename)
    if unreachable is None:
        return Path(hf_hub_download(repo_id, filename)), True
    cached = try_to_load_from_cache(repo_id, filename)
    if not isinstance(cached, str):
        raise LocalEntryNotFoundError(f"the Hub cannot be reached ({one_line(unreachable)})") from unreachable
    return Path(cached), False


def pretrained_options(name_or_path: str | os.PathLike, filename: str = "config.json") -> dict:
    """
    What `from_pretrained` needs to load `name_or_path` without waiting on a Hub out of reach: nothing for a folder
    or when the Hub answers; `{"local_files_only": True}` when it cannot be reached and its cache holds the
    repository's `filename`. Without that, `from_pretrained` retries every file it looks for (about 25 seconds each).

    Raises:
        ValueError: one line, when the Hub cannot be reached (or HF_HUB_OFFLINE is set) and the cache does not hold
            `filename` of `name_or_path`.
    """
    if Path(name_or_path).expanduser().is_dir():
        return {}
    try:
        _, reachable = download_from_hub(str(name_or_path), filename)
    except LocalEntryNotFoundError as error:
        raise ValueError(
            f"{name_or_path}: no such folder here, and {out_of_reach_reason()}, with no copy of its {filename} in the "
            "cache; give a folder, or download it once while online."
        ) from error
    except (HFValidationError, HfHubHTTPError):
        return {}  # not a Hub id, or no such repository or file: from_pretrained says so in its own words
    return {} if reachable else {"local_files_only": True}


def check_hub_dataset(name: str) -> None:
    """
    Before `datasets` loads the Hub dataset `name`, which would retry each file for about 25 seconds when the Hub
    cannot be reached: that case ends at once. Nothing is checked for a folder, with HF_HUB_OFFLINE set (then
    `datasets` reads its cache alone), or for a name the Hub answers for (`datasets` then says what it has).

    Raises:
        ValueError: one line, when the Hub cannot be reached.
    """
    if Path(name).is_dir() or is_offline_mode():
        return
    try:
        validate_repo_id(name)
        unreachable = hub_out_of_reach(name, "README.md", repo_type="dataset")
    except (HFValidationError, HfHubHTTPError):
        return
    if unreachable is not None:
        raise ValueError(
            f"the dataset {name}: the Hub cannot be reached ({one_line(unreachable)}); to use a copy in the cache, "
            "set HF_HUB_OFFLINE=1."
        )


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
    the commit's URL. (`HfApi.upload_folder` may split a folder over several commits.) The package's own
    `handler.py` does not replace a different one the repository already holds.
    """
    folder = Path(folder)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    names = list(filter_repo_objects(files, ignore_patterns=NOT_PUBLISHED))
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if HANDLER_FILE.name in names and keeps_its_handler(api, repo_id, folder / HANDLER_FILE.name):
        logger.warning(
            f"Kept the handler.py in {repo_id}, which differs from cascade-clip's Inference Endpoints handler; "
            "delete it from the repository and push again to get cascade-clip's."
        )
        names = [name for name in names if name != HANDLER_FILE.name]
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in names]
    return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message).commit_url


def keeps_its_handler(api: HfApi, repo_id: str, handler: Path) -> bool:
    """Whether `repo_id` holds a `handler.py` of its own that the package's `handler` (a file) would replace."""
    if handler.read_bytes() != HANDLER_FILE.read_bytes() or not api.file_exists(repo_id, HANDLER_FILE.name):
        return False
    with tempfile.TemporaryDirectory() as download:
        existing = api.hf_hub_download(repo_id, HANDLER_FILE.name, local_dir=download)
        return Path(existing).read_bytes() != handler.read_bytes()


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
