// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title AdminBalanceToken
/// @notice ERC20 for tests whose balances can also change without a Transfer log: `setBalance`
/// (an admin correction) and `rebase` (every balance scaled, as a rebasing token does). Transfers
/// and mints emit Transfer as usual.
contract AdminBalanceToken {
    uint256 public totalSupply;
    uint8 public constant decimals = 18;
    /// Balances are stored as shares; balanceOf = shares × index / 1e18.
    uint256 public index = 1e18;

    mapping(address => uint256) internal shares;

    event Transfer(address indexed from, address indexed to, uint256 value);

    error InsufficientBalance(address account, uint256 balance, uint256 needed);

    function balanceOf(address owner) public view returns (uint256) {
        return (shares[owner] * index) / 1e18;
    }

    function mint(address to, uint256 amount) external {
        shares[to] += (amount * 1e18) / index;
        totalSupply += amount;
        emit Transfer(address(0), to, amount);
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        uint256 balance = balanceOf(msg.sender);
        if (balance < amount) revert InsufficientBalance(msg.sender, balance, amount);
        uint256 s = (amount * 1e18) / index;
        shares[msg.sender] -= s;
        shares[to] += s;
        emit Transfer(msg.sender, to, amount);
        return true;
    }

    /// Sets a balance without any log.
    function setBalance(address who, uint256 amount) external {
        shares[who] = (amount * 1e18) / index;
    }

    /// Scales every balance by newIndex / index, without any log.
    function rebase(uint256 newIndex) external {
        index = newIndex;
    }
}
