// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title TestMultiToken
/// @notice Minimal ERC1155 for tests. Open minting; transfers do not call receiver hooks.
contract TestMultiToken {
    mapping(uint256 => mapping(address => uint256)) private _balances;
    mapping(address => mapping(address => bool)) public isApprovedForAll;

    event TransferSingle(
        address indexed operator, address indexed from, address indexed to, uint256 id, uint256 value
    );
    event TransferBatch(
        address indexed operator, address indexed from, address indexed to, uint256[] ids, uint256[] values
    );
    event ApprovalForAll(address indexed account, address indexed operator, bool approved);

    error InsufficientBalance(address account, uint256 id, uint256 balance, uint256 needed);
    error NotAuthorized(address operator, address from);
    error LengthMismatch(uint256 ids, uint256 values);
    error ZeroAddress();

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0xd9b67a26 || interfaceId == 0x01ffc9a7;
    }

    function balanceOf(address account, uint256 id) external view returns (uint256) {
        return _balances[id][account];
    }

    function balanceOfBatch(address[] calldata accounts, uint256[] calldata ids)
        external
        view
        returns (uint256[] memory balances)
    {
        if (accounts.length != ids.length) revert LengthMismatch(ids.length, accounts.length);
        balances = new uint256[](accounts.length);
        for (uint256 i = 0; i < accounts.length; ++i) {
            balances[i] = _balances[ids[i]][accounts[i]];
        }
    }

    function setApprovalForAll(address operator, bool approved) external {
        isApprovedForAll[msg.sender][operator] = approved;
        emit ApprovalForAll(msg.sender, operator, approved);
    }

    function mint(address to, uint256 id, uint256 amount) external {
        if (to == address(0)) revert ZeroAddress();
        _balances[id][to] += amount;
        emit TransferSingle(msg.sender, address(0), to, id, amount);
    }

    function mintBatch(address to, uint256[] calldata ids, uint256[] calldata amounts) external {
        if (to == address(0)) revert ZeroAddress();
        if (ids.length != amounts.length) revert LengthMismatch(ids.length, amounts.length);
        for (uint256 i = 0; i < ids.length; ++i) {
            _balances[ids[i]][to] += amounts[i];
        }
        emit TransferBatch(msg.sender, address(0), to, ids, amounts);
    }

    function safeTransferFrom(address from, address to, uint256 id, uint256 amount, bytes calldata) external {
        _authorize(from);
        if (to == address(0)) revert ZeroAddress();
        _move(from, to, id, amount);
        emit TransferSingle(msg.sender, from, to, id, amount);
    }

    function safeBatchTransferFrom(
        address from,
        address to,
        uint256[] calldata ids,
        uint256[] calldata amounts,
        bytes calldata
    ) external {
        _authorize(from);
        if (to == address(0)) revert ZeroAddress();
        if (ids.length != amounts.length) revert LengthMismatch(ids.length, amounts.length);
        for (uint256 i = 0; i < ids.length; ++i) {
            _move(from, to, ids[i], amounts[i]);
        }
        emit TransferBatch(msg.sender, from, to, ids, amounts);
    }

    function _authorize(address from) internal view {
        if (from != msg.sender && !isApprovedForAll[from][msg.sender]) revert NotAuthorized(msg.sender, from);
    }

    function _move(address from, address to, uint256 id, uint256 amount) internal {
        uint256 balance = _balances[id][from];
        if (balance < amount) revert InsufficientBalance(from, id, balance, amount);
        unchecked {
            _balances[id][from] = balance - amount;
        }
        _balances[id][to] += amount;
    }
}
