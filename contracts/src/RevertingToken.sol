// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title RevertingToken
/// @notice ERC20-shaped token whose balanceOf always reverts, to test that one broken token does not
/// sink a batch of reads.
contract RevertingToken {
    string public constant name = "Reverting";
    string public constant symbol = "RVT";
    uint8 public constant decimals = 18;
    uint256 public constant totalSupply = 0;

    event Transfer(address indexed from, address indexed to, uint256 value);

    error BalanceUnavailable(address account);

    function balanceOf(address account) external pure returns (uint256) {
        revert BalanceUnavailable(account);
    }

    function transfer(address, uint256) external pure returns (bool) {
        return false;
    }
}
